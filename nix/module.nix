# NixOS module: runs `ipnix daemon` and points Nix at its binary cache.
#   imports = [ ./nix/module.nix ];
#   services.ipnix.enable = true;
{ config, lib, pkgs, ... }:

let
  cfg = config.services.ipnix;
in
{
  options.services.ipnix = {
    enable = lib.mkEnableOption "the ipnix IPFS peer and Nix binary cache";
    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.callPackage ./package.nix { };
      description = "The ipnix package.";
    };
    http = lib.mkOption {
      type = lib.types.str;
      default = "127.0.0.1:4880";
      description = "Address of the HTTP API, gateway and binary cache.";
    };
    extraArgs = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "--swarm-key" "/etc/ipnix/swarm.key" ];
      description = "Extra arguments for `ipnix daemon`.";
    };
    substitute = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Add the local ipnix cache to Nix's substituters.";
    };
  };

  config = lib.mkIf cfg.enable {
    systemd.services.ipnix = {
      description = "ipnix peer";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      environment.IPNIX_REPO = "/var/lib/ipnix";
      serviceConfig = {
        ExecStart = lib.escapeShellArgs ([ (lib.getExe cfg.package) "daemon" "--http" cfg.http ] ++ cfg.extraArgs);
        StateDirectory = "ipnix";
        DynamicUser = true;
        Restart = "on-failure";
      };
    };
    nix.settings.extra-substituters = lib.mkIf cfg.substitute [ "http://${cfg.http}" ];
  };
}
