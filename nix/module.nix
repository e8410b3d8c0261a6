# NixOS module: `services.ipnix` runs `ipnix daemon` as a hardened service
# (dynamic user, state in /var/lib/ipnix), points Nix at its binary cache,
# and can pin nixpkgs sources lists on a timer.
#
#   imports = [ ./nix/module.nix ];
#   services.ipnix = {
#     enable = true;
#     openFirewall = true;
#     swarmKeyFile = "/run/secrets/ipnix-swarm.key";
#     sourcesLists = [ "https://example.org/nixpkgs/sources.json" ];
#   };
#
# Only parsed here (`nix-instantiate --parse`, tests/tests/packaging.rs):
# without nixpkgs it has not been evaluated in a NixOS system.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.ipnix;
  ipnix = lib.getExe cfg.package;

  # Ports of `proto` ("tcp" or "udp") in the listen multiaddrs; 0 (any) left out.
  portsOf = proto: addrs:
    lib.unique (lib.filter (port: port != 0) (lib.concatMap
      (addr:
        let
          parts = lib.splitString "/" addr;
          last = builtins.length parts - 2;
          at = lib.filter (i: builtins.elemAt parts i == proto) (lib.range 0 last);
        in
        map (i: lib.toInt (builtins.elemAt parts (i + 1))) at)
      addrs));

  # The cache as this machine's Nix reaches it: a wildcard address means loopback.
  httpPort = lib.last (lib.splitString ":" cfg.http);
  localHttp =
    if lib.hasPrefix "0.0.0.0:" cfg.http || lib.hasPrefix "[::]:" cfg.http
    then "127.0.0.1:${httpPort}"
    else cfg.http;

  # Secrets reach the dynamic user as credentials, never by file mode.
  credentials =
    lib.optional (cfg.swarmKeyFile != null) "swarm.key:${cfg.swarmKeyFile}"
    ++ lib.optional (cfg.signKeyFile != null) "sign.key:${cfg.signKeyFile}";

  daemonArgs =
    [ "daemon" "--http" cfg.http ]
    ++ lib.concatMap (addr: [ "--listen" addr ]) cfg.listen
    ++ lib.optionals (cfg.swarmKeyFile != null) [ "--swarm-key" "%d/swarm.key" ]
    ++ lib.optionals (cfg.signKeyFile != null) [ "--sign-key" "%d/sign.key" ]
    ++ lib.optionals (cfg.trustedPublicKeys != [ ])
      ([ "--trusted-public-keys" ] ++ cfg.trustedPublicKeys)
    ++ cfg.extraArgs;

  pinSources = pkgs.writeShellScript "ipnix-pin-sources" ''
    status=0
    ${lib.concatMapStrings (list: ''
      ${ipnix} sources pin ${lib.escapeShellArg "${list}"} || status=1
    '') cfg.sourcesLists}
    exit $status
  '';

  hardening = {
    DynamicUser = true;
    # The same name in both units: the timer's runs share the daemon's
    # dynamic user, so they can read its api.token.
    User = "ipnix";
    Group = "ipnix";
    StateDirectory = lib.removePrefix "/var/lib/" cfg.dataDir;
    StateDirectoryMode = "0700";
    UMask = "0077";
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    PrivateUsers = true;
    ProtectHostname = true;
    ProtectClock = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    # Netlink: libp2p watches the interfaces to know its addresses.
    RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" "AF_NETLINK" ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    RemoveIPC = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@privileged" ];
  };
in
{
  options.services.ipnix = {
    enable = lib.mkEnableOption "the ipnix IPFS peer and Nix binary cache";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./nix/package.nix { }";
      description = "The ipnix package to use.";
    };

    listen = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ "/ip4/0.0.0.0/tcp/4801" "/ip4/0.0.0.0/udp/4801/quic-v1" ];
      example = [ "/ip4/0.0.0.0/tcp/4801" "/ip6/::/tcp/4801" ];
      description = ''
        libp2p listen multiaddrs (`--listen`). With {option}`openFirewall`
        their TCP and UDP ports are opened.
      '';
    };

    http = lib.mkOption {
      type = lib.types.str;
      default = "127.0.0.1:4880";
      example = "0.0.0.0:4880";
      description = ''
        Address (IP:PORT) of the trustless gateway, Nix binary cache,
        `/metrics` and status page (`--http`). On a loopback address the
        control API shares it; otherwise the control API moves to a loopback
        port of its own. Not opened by {option}`openFirewall`.
      '';
    };

    dataDir = lib.mkOption {
      type = lib.types.str;
      default = "/var/lib/ipnix";
      description = ''
        The repo (store, identity key, settings). Must be under
        {file}`/var/lib`: systemd creates it for the service's dynamic user.
      '';
    };

    swarmKeyFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      example = "/run/secrets/ipnix-swarm.key";
      description = ''
        Private network key (Kubo's swarm.key format): only peers holding it
        connect, over TCP only. Passed to the service as a systemd
        credential, so the file may stay readable by root alone. Give a
        string path outside the Nix store, not a Nix path literal, or the key
        is copied into the world-readable store.
      '';
    };

    signKeyFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      example = "/run/secrets/ipnix-cache.sec";
      description = ''
        Nix secret key (name:base64, from `nix-store --generate-binary-cache-key`)
        that signs narinfos the binary cache serves (`--sign-key`). A
        systemd credential, as {option}`swarmKeyFile`.
      '';
    };

    trustedPublicKeys = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
      description = ''
        Upstream keys (as Nix's `trusted-public-keys`) whose signature on a
        path earns it the node's own (`--trusted-public-keys`); only used
        with {option}`signKeyFile`.
      '';
    };

    sourcesLists = lib.mkOption {
      type = lib.types.listOf (lib.types.either lib.types.path lib.types.str);
      default = [ ];
      example = [ "https://example.org/nixpkgs/sources.json" ./sources.json ];
      description = ''
        nixpkgs sources.json lists (paths or http(s) URLs) that
        `ipnix sources pin` fetches, verifies and pins on the
        {option}`sourcesInterval` timer. Each is pinned under its default
        name, `nixpkgs-<revision>`; a list whose revision moves on leaves the
        old one pinned until `ipnix sources unpin`.
      '';
    };

    sourcesInterval = lib.mkOption {
      type = lib.types.str;
      default = "daily";
      example = "Mon *-*-* 03:00:00";
      description = ''
        When to pin {option}`sourcesLists` again, as systemd's OnCalendar
        (see {manpage}`systemd.time(7)`).
      '';
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Open the swarm ports of {option}`listen` (TCP and QUIC/UDP) in the
        firewall. The HTTP address is never opened: do that by hand if the
        LAN should reach the cache.
      '';
    };

    substitute = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Add the local ipnix binary cache to Nix's substituters.";
    };

    extraArgs = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "--no-mdns" "--share-paths" ];
      description = "Extra arguments for `ipnix daemon`.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = lib.hasPrefix "/var/lib/" cfg.dataDir;
        message = "services.ipnix.dataDir must be under /var/lib (it is the service's StateDirectory).";
      }
    ];

    environment.systemPackages = [ cfg.package ];

    systemd.services.ipnix = {
      description = "ipnix IPFS peer and Nix binary cache";
      documentation = [ "man:ipnix(1)" "man:ipnix-daemon(1)" ];
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      environment.IPNIX_REPO = cfg.dataDir;
      serviceConfig = hardening // {
        Type = "exec";
        ExecStart = "${ipnix} ${lib.escapeShellArgs daemonArgs}";
        LoadCredential = credentials;
        Restart = "on-failure";
        RestartSec = "5s";
        KillSignal = "SIGTERM";
        TimeoutStopSec = "60s";
        LimitNOFILE = 65536;
      };
    };

    systemd.services.ipnix-sources = lib.mkIf (cfg.sourcesLists != [ ]) {
      description = "Pin nixpkgs sources lists in ipnix";
      after = [ "ipnix.service" ];
      requires = [ "ipnix.service" ];
      environment.IPNIX_REPO = cfg.dataDir;
      serviceConfig = hardening // {
        Type = "oneshot";
        ExecStart = pinSources;
      };
    };

    systemd.timers.ipnix-sources = lib.mkIf (cfg.sourcesLists != [ ]) {
      description = "Pin nixpkgs sources lists in ipnix";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.sourcesInterval;
        Persistent = true;
        RandomizedDelaySec = "10min";
      };
    };

    networking.firewall = lib.mkIf cfg.openFirewall {
      allowedTCPPorts = portsOf "tcp" cfg.listen;
      allowedUDPPorts = portsOf "udp" cfg.listen;
    };

    nix.settings.extra-substituters = lib.mkIf cfg.substitute [ "http://${localHttp}" ];
  };
}
