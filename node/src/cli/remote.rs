//! The CLI side of the control API: forwards a command to the daemon that
//! holds the repo, proving with the repo's `api.token` that it runs as the
//! repo's owner, and relays the command's stdout, stderr and exit code.

use crate::{BlockCommand, Command, DagCommand};
use ipnix_node::http::api::{
    encode_request, read_frame, CommandRequest, FrameKind, COMMAND_HEADER, RUN_PATH, TOKEN_SCHEME,
};
use ipnix_node::repo::Repo;
use std::io::Write;
use std::path::Path;

/// Runs the command in `repo`'s daemon at `url`. `Ok(None)`: no daemon answered.
pub fn run(
    repo: &Repo,
    url: &str,
    args: Vec<String>,
    command: &Command,
) -> anyhow::Result<Option<i32>> {
    let request = CommandRequest {
        args,
        cwd: std::env::current_dir()?,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(None)
        .http_status_as_error(false)
        // The daemon is on loopback: a proxy from HTTP_PROXY or ALL_PROXY
        // would not reach it (Go's, and so Kubo's, clients never proxy
        // loopback either).
        .proxy(None)
        .build()
        .into();
    let token = repo.read_api_token();
    let mut call = agent
        .post(format!("{}{}", url.trim_end_matches('/'), RUN_PATH))
        .header(COMMAND_HEADER, encode_request(&request));
    if let Ok(token) = &token {
        call = call.header("authorization", format!("{TOKEN_SCHEME} {token}"));
    }
    let sent = if reads_stdin(command) {
        let stdin = std::io::stdin();
        call.send(ureq::SendBody::from_reader(&mut stdin.lock()))
    } else {
        call.send_empty()
    };
    let mut response = match sent {
        Ok(response) => response,
        Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Ok(None)
        }
        Err(ureq::Error::ConnectionFailed) => return Ok(None),
        Err(e) => anyhow::bail!("the daemon at {url} did not answer: {e}"),
    };
    if response.status() != 200 {
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let why_no_token = match &token {
            Err(e) if response.status() == 403 => format!(" (cannot read the token: {e})"),
            _ => String::new(),
        };
        anyhow::bail!(
            "the daemon at {url} refused the command ({}): {}{why_no_token}",
            response.status(),
            text.trim()
        );
    }
    let mut body = response.into_body().into_reader();
    let stdout = std::io::stdout();
    let mut stdout = stdout.lock();
    let mut stderr = std::io::stderr();
    while let Some((kind, payload)) = read_frame(&mut body)? {
        match kind {
            FrameKind::Stdout => stdout.write_all(&payload)?,
            FrameKind::Stderr => stderr.write_all(&payload)?,
            FrameKind::Exit => {
                stdout.flush()?;
                let code: [u8; 4] = payload
                    .as_slice()
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("bad exit frame"))?;
                return Ok(Some(i32::from_be_bytes(code)));
            }
        }
    }
    anyhow::bail!("the daemon at {url} stopped before the command finished")
}

fn reads_stdin(command: &Command) -> bool {
    let dash = |p: &Path| p == Path::new("-");
    match command {
        Command::Add(args) => dash(&args.path),
        Command::Block(BlockCommand::Put { file, .. }) => file.as_deref().is_none_or(dash),
        Command::Dag(DagCommand::Import { file, .. }) => dash(file),
        _ => false,
    }
}
