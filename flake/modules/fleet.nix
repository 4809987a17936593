# Fleet plumbing: the probe and bench on PATH, /etc/ipex-fleet/config.json (what the probe
# reads: one source of truth for ports, model paths and health policy), binary-cache trust,
# node-exporter textfile metrics, boot-entry retention, and the host-side state directory.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.ipex-fleet;
  defaults = builtins.fromJSON (builtins.readFile ../lib/defaults.json);
  inherit (lib) mkEnableOption mkIf mkOption types;

  serviceType = types.submodule {
    options = {
      url = mkOption { type = types.str; description = "Base URL of the service's HTTP API."; };
      models = mkOption { type = types.str; description = "Where the service's models live."; };
      unit = mkOption { type = types.str; description = "The systemd unit."; };
      accelerator = mkOption { type = types.str; default = "cpu"; description = "What the service runs on."; };
      smokeModel = mkOption { type = types.nullOr types.str; default = null; description = "Model for the smoke generation."; };
    };
  };

  # An IPv4 or IPv6 address, with an optional prefix length: what the firewall rules can take.
  address = types.addCheck types.str (s:
    builtins.match "([0-9]{1,3}[.]){3}[0-9]{1,3}(/[0-9]{1,2})?" s != null
    || builtins.match "[0-9a-fA-F:]*:[0-9a-fA-F:.]*(/[0-9]{1,3})?" s != null) // {
    description = "IPv4 or IPv6 address, optionally with a prefix length";
  };
  exporterPort = toString config.services.prometheus.exporters.node.port;
  isIPv6 = a: lib.hasInfix ":" a;
  v4 = lib.filter (a: !isIPv6 a) cfg.metrics.allowFrom;
  v6 = lib.filter isIPv6 cfg.metrics.allowFrom;

  fleetConfig = {
    inherit (defaults) schema;
    host = config.networking.hostName;
    accelerator = cfg.accelerator;
    min_devices = cfg.minDevices;
    render_group = defaults.render_group;
    services = lib.mapAttrs (_: s: {
      inherit (s) url models unit accelerator;
      smoke_model = s.smokeModel;
    }) cfg.services;
    health = {
      levels = cfg.health.levels;
      bench_tolerance = cfg.health.benchTolerance;
      memory_fraction = cfg.health.memoryFraction;
      required_checks = cfg.health.requiredChecks;
    };
  };
in
{
  # What this module reads, so that it also works alone (the module system imports a path once).
  imports = [ ./ipex.nix ];

  options.services.ipex-fleet = {
    enable = mkEnableOption "ipex-fleet's host side: probe, bench, metrics and deploy plumbing";

    package = mkOption {
      type = types.package;
      description = "The ipex-fleet package (probe and bench), built with the host's torch.";
    };

    accelerator = mkOption {
      type = types.enum [ "xpu" "cuda" "cpu" "any" ];
      default = if config.services.ipex.enable then "xpu" else "any";
      description = "The accelerator the health checks require.";
    };

    minDevices = mkOption {
      type = types.ints.unsigned;
      default = 1;
      description = "How many devices of that accelerator must be visible.";
    };

    services = mkOption {
      type = types.attrsOf serviceType;
      default = { };
      internal = true;
      description = "Filled by the ollama and comfyui modules; written to config.json for the probe.";
    };

    health = {
      levels = mkOption {
        type = types.listOf (types.enum [ 1 2 3 ]);
        default = defaults.health.levels;
        description = "Health levels run after each deploy (1 software, 2 functional, 3 performance).";
      };
      benchTolerance = mkOption {
        type = types.float;
        default = defaults.health.bench_tolerance;
        description = "A benchmark slower than the baseline by more than this fraction fails the gate.";
      };
      memoryFraction = mkOption {
        type = types.float;
        default = defaults.health.memory_fraction;
        description = "Fraction of free device memory the level-2 allocation check takes.";
      };
      requiredChecks = mkOption {
        type = types.listOf types.str;
        default = defaults.health.required_checks;
        description = "Checks whose `warn` or `skip` also fails the gate.";
      };
    };

    cache = {
      substituters = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "https://cache.example.internal" ];
        description = "Binary caches the fleet's closures come from (build once, substitute everywhere).";
      };
      trustedPublicKeys = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Keys that sign the fleet's cache; unsigned or foreign paths are refused.";
      };
    };

    metrics = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Write the probe's results as textfile metrics and have node_exporter read them (it is
          enabled, with --collector.textfile.directory, as nixpkgs' module has no textfile option).
        '';
      };
      directory = mkOption {
        type = types.path;
        default = "/var/lib/prometheus-node-exporter-text";
        description = "The node exporter's textfile collector directory.";
      };
      interval = mkOption {
        type = types.str;
        default = "5min";
        description = "How often the level-1 probe runs for metrics.";
      };
      allowFrom = mkOption {
        type = types.listOf address;
        default = [ ];
        example = [ "10.40.9.10" "fd00:40::/64" ];
        description = ''
          Addresses (IPv4 or IPv6, with an optional prefix length) allowed to scrape the node
          exporter; the firewall opens its port to them only. Empty: closed, with a warning.
        '';
      };
    };

    bootEntriesKept = mkOption {
      type = types.ints.positive;
      default = 10;
      description = "Boot entries kept, so older generations stay bootable for rollback.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = config.fileSystems ? "/";
        message = "host ${config.networking.hostName} has no hardware configuration (no fileSystems.\"/\"): run "
          + "`ipex-fleet enroll HOST --name ${config.networking.hostName}`, or save the output of "
          + "`nixos-generate-config --show-hardware-config` on it as flake/hosts/${config.networking.hostName}/hardware-configuration.nix";
      }
      {
        assertion = !config.boot.loader.systemd-boot.enable
          || builtins.hasAttr config.boot.loader.efi.efiSysMountPoint config.fileSystems;
        message = "host ${config.networking.hostName} uses systemd-boot but mounts no ESP at "
          + "${config.boot.loader.efi.efiSysMountPoint}: add it to its hardware configuration";
      }
      {
        assertion = cfg.accelerator != "xpu" || config.services.ipex.enable;
        message = "services.ipex-fleet.accelerator = xpu needs services.ipex.enable = true";
      }
      {
        assertion = cfg.cache.substituters == [ ] || cfg.cache.trustedPublicKeys != [ ];
        message = "services.ipex-fleet.cache.substituters needs trustedPublicKeys: the fleet only substitutes signed paths";
      }
    ];

    environment.systemPackages = [ cfg.package ];
    environment.etc."ipex-fleet/config.json".text = builtins.toJSON fleetConfig;

    nix.settings = {
      extra-substituters = cfg.cache.substituters;
      extra-trusted-public-keys = cfg.cache.trustedPublicKeys;
      experimental-features = [ "nix-command" "flakes" ];
    };

    boot.loader.systemd-boot.configurationLimit = lib.mkDefault cfg.bootEntriesKept;
    boot.loader.grub.configurationLimit = lib.mkDefault cfg.bootEntriesKept;

    # Deploy state (pushed flakes, deploys.jsonl, bench baselines, the lock, the host agent). The
    # magic-rollback watchdog is armed per deploy by the host agent as a transient unit; this boot
    # unit re-arms it after a reboot or a crash (its lease counted from the new boot) and finishes a
    # revert a crash interrupted. It runs the agent the controller installed under
    # /var/lib/ipex-fleet/agent, with an interpreter pinned there by a GC root: never anything of
    # the generation being deployed.
    systemd.services.ipex-fleet-agent = {
      description = "ipex-fleet host agent at boot (re-arm an open deploy intent, finish interrupted reverts)";
      wantedBy = [ "multi-user.target" ];
      after = [ "local-fs.target" ];
      unitConfig.ConditionPathExists = "/var/lib/ipex-fleet/agent/agent.py";
      path = [ config.nix.package pkgs.coreutils ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = "/var/lib/ipex-fleet/agent/run /var/lib/ipex-fleet/agent/agent.py boot";
      };
    };
    systemd.tmpfiles.rules = [
      "d /var/lib/ipex-fleet 0750 root root -"
      "d /var/lib/ipex-fleet/bench 0750 root root -"
    ] ++ lib.optional cfg.metrics.enable "d ${cfg.metrics.directory} 0755 root root -";

    services.prometheus.exporters.node = mkIf cfg.metrics.enable {
      enable = lib.mkDefault true;
      extraFlags = [ "--collector.textfile.directory=${cfg.metrics.directory}" ];
    };

    # The exporter listens on every address; the firewall lets only the declared scrapers in (both
    # of NixOS' firewall backends: nftables rules, or iptables commands in its nixos-fw chain).
    warnings = lib.optional (cfg.metrics.enable && cfg.metrics.allowFrom == [ ])
      ("services.ipex-fleet.metrics.allowFrom is empty: the node exporter's port ${exporterPort} stays closed "
        + "and nothing can scrape this host's metrics; list your Prometheus addresses there");
    networking.firewall = mkIf (cfg.metrics.enable && cfg.metrics.allowFrom != [ ]) (
      if config.networking.nftables.enable then {
        extraInputRules = lib.concatStringsSep "\n" (
          lib.optional (v4 != [ ]) "ip saddr { ${lib.concatStringsSep ", " v4} } tcp dport ${exporterPort} accept"
          ++ lib.optional (v6 != [ ]) "ip6 saddr { ${lib.concatStringsSep ", " v6} } tcp dport ${exporterPort} accept");
      } else {
        extraCommands = lib.concatMapStrings (a:
          "${if isIPv6 a then "ip6tables" else "iptables"} -A nixos-fw -p tcp -s ${a} --dport ${exporterPort} -j nixos-fw-accept\n")
          cfg.metrics.allowFrom;
      });

    systemd.services.ipex-fleet-metrics = mkIf cfg.metrics.enable {
      description = "ipex-fleet health probe as node-exporter textfile metrics";
      serviceConfig = {
        Type = "oneshot";
        # The same files the deploy writes (one file per source: node_exporter refuses duplicates).
        ExecStart = [
          "${lib.getExe cfg.package} probe --level 1 --textfile ${cfg.metrics.directory}/ipex_fleet_probe.prom"
          "${lib.getExe cfg.package} metrics --textfile-dir ${cfg.metrics.directory}"
        ];
        TimeoutStartSec = 120;
        SupplementaryGroups = [ "render" "video" ];
      };
    };
    systemd.timers.ipex-fleet-metrics = mkIf cfg.metrics.enable {
      wantedBy = [ "timers.target" ];
      timerConfig = { OnBootSec = "2min"; OnUnitActiveSec = cfg.metrics.interval; };
    };
  };
}
