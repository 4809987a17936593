# The fleet's controller: a systemd timer runs `ipex-fleet maintain` on a schedule, from a checkout of
# the fleet repository (deploys/, inventories/, the flake). Two runs never overlap: systemd does not
# start a unit that is still running, and the run holds a lock (flock) that a manual
# `systemctl start` or a second timer also honours. A missed run (the controller was off) runs at
# boot (Persistent), with a random delay so many controllers do not start at once.
{ config, lib, pkgs, ... }:
let
  cfg = config.services.ipex-fleet-controller;
  args = lib.escapeShellArgs ([ "maintain" cfg.inventory ] ++ cfg.maintainArgs);
in
{
  options.services.ipex-fleet-controller = {
    enable = lib.mkEnableOption "scheduled ipex-fleet maintenance runs from this controller";
    package = lib.mkOption {
      type = lib.types.package;
      description = "The ipex-fleet package (with pyinfra) the controller runs.";
    };
    repository = lib.mkOption {
      type = lib.types.path;
      example = "/srv/fleet";
      description = "The fleet repository's checkout: ipex-fleet runs from its root (deploys/, inventories/).";
    };
    inventory = lib.mkOption {
      type = lib.types.str;
      default = "inventories/prod.py";
      description = "The inventory, relative to the repository.";
    };
    schedule = lib.mkOption {
      type = lib.types.str;
      default = "Sun 03:00";
      description = "When maintenance runs (systemd OnCalendar).";
    };
    randomizedDelay = lib.mkOption {
      type = lib.types.str;
      default = "30m";
      description = "A random delay before each run (RandomizedDelaySec).";
    };
    maintainArgs = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ "--lock-wait" "600" ];
      example = [ "--waves" "1,25%,100%" "--max-fail" "1" "--restart" ];
      description = "Arguments of `ipex-fleet maintain` after the inventory.";
    };
    user = lib.mkOption {
      type = lib.types.str;
      default = "ipex-fleet";
      description = "The user that runs maintenance: it holds the SSH key and known_hosts of the fleet.";
    };
    stateDirectory = lib.mkOption {
      type = lib.types.str;
      default = "/var/lib/ipex-fleet-controller";
      description = "The controller's ledger and runs (IPEX_FLEET_STATE).";
    };
  };

  config = lib.mkIf cfg.enable {
    users.users.${cfg.user} = {
      isSystemUser = true;
      group = cfg.user;
      home = cfg.stateDirectory;
    };
    users.groups.${cfg.user} = { };
    systemd.tmpfiles.rules = [ "d ${cfg.stateDirectory} 0750 ${cfg.user} ${cfg.user} - -" ];
    systemd.services.ipex-fleet-maintain = {
      description = "ipex-fleet maintenance of ${cfg.inventory}";
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      path = [ cfg.package pkgs.openssh pkgs.nix ];
      environment = { IPEX_FLEET_STATE = cfg.stateDirectory; };
      serviceConfig = {
        Type = "oneshot";
        User = cfg.user;
        Group = cfg.user;
        WorkingDirectory = cfg.repository;
        # --nonblock: a run that finds the lock taken exits (code 1) instead of queueing behind it.
        ExecStart = "${pkgs.util-linux}/bin/flock --nonblock ${cfg.stateDirectory}/maintain.lock ${lib.getExe cfg.package} ${args}";
        TimeoutStartSec = "6h";
      };
    };
    systemd.timers.ipex-fleet-maintain = {
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.schedule;
        Persistent = true;
        RandomizedDelaySec = cfg.randomizedDelay;
      };
    };
  };
}
