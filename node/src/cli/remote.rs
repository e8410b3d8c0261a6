//! The CLI side of the control API: forwards a command to the daemon that
//! holds the repo and relays its stdout, stderr and exit code.

use crate::{BlockCommand, Command, DagCommand};
use ipnix_node::http::api::{encode_request, read_frame, CommandRequest, FrameKind, RUN_PATH};
use std::io::Write;
use std::path::Path;

/// Runs the command in the daemon at `url`. `Ok(None)`: no daemon answered.
pub fn run(url: &str, args: Vec<String>, command: &Command) -> anyhow::Result<Option<i32>> {
    let request = CommandRequest {
        args,
        cwd: std::env::current_dir()?,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(None)
        .http_status_as_error(false)
        .build()
        .into();
    let call = agent
        .post(format!("{}{}", url.trim_end_matches('/'), RUN_PATH))
        .header(
            ipnix_node::http::api::COMMAND_HEADER,
            encode_request(&request),
        );
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
        anyhow::bail!(
            "the daemon at {url} refused the command ({}): {}",
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
