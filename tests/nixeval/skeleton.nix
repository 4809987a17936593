# A skeleton of the NixOS options the fleet's modules touch, for evaluating them through the real
# nixpkgs `lib.evalModules` where nixpkgs itself cannot be fetched. Where nixpkgs has the module
# (users, systemd, services.ollama, the node exporter, boot loaders, nixpkgs.*), the options follow
# its types, defaults and assertions (nixos/modules/..., 2026); everything else is left out, so a
# module that sets an option nixpkgs lacks fails here as it fails there ("option does not exist").
# ollamaShape: "modelsDir" (services.ollama from 2026-07, PR #537550) or "models" (before it).
{ lib, stubPkgs, ollamaShape ? "modelsDir" }:
let
  inherit (lib) mkOption mkEnableOption mkIf mkDefault types;

  # systemd's unit option type (nixos/lib/systemd-types.nix): lists concatenate, scalars must agree.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    check = _: true;
    merge = loc: defs:
      let values = map (d: d.value) defs;
      in if lib.all lib.isList values then lib.concatLists values
      else if lib.any lib.isList values then lib.concatLists (map lib.toList values)
      else lib.mergeEqualOption loc defs;
  };
  unitCommon = {
    description = mkOption { type = types.str; default = ""; };
    wantedBy = mkOption { type = types.listOf types.str; default = [ ]; };
    requiredBy = mkOption { type = types.listOf types.str; default = [ ]; };
    after = mkOption { type = types.listOf types.str; default = [ ]; };
    before = mkOption { type = types.listOf types.str; default = [ ]; };
    wants = mkOption { type = types.listOf types.str; default = [ ]; };
    requires = mkOption { type = types.listOf types.str; default = [ ]; };
    bindsTo = mkOption { type = types.listOf types.str; default = [ ]; };
    unitConfig = mkOption { type = types.attrsOf unitOption; default = { }; };
  };
  serviceType = types.submodule {
    options = unitCommon // {
      environment = mkOption { type = types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ])); default = { }; };
      path = mkOption { type = types.listOf (types.either types.package types.str); default = [ ]; };
      serviceConfig = mkOption { type = types.attrsOf unitOption; default = { }; };
      script = mkOption { type = types.lines; default = ""; };
      preStart = mkOption { type = types.lines; default = ""; };
      restartIfChanged = mkOption { type = types.bool; default = true; };
      startAt = mkOption { type = types.either types.str (types.listOf types.str); default = [ ]; };
    };
  };
  timerType = types.submodule {
    options = unitCommon // {
      timerConfig = mkOption { type = types.attrsOf unitOption; default = { }; };
    };
  };

  # users-groups.nix: a user is a system or a normal user, never both, and names its group.
  userType = types.submodule ({ name, ... }: {
    options = {
      name = mkOption { type = types.str; default = name; };
      isSystemUser = mkOption { type = types.bool; default = false; };
      isNormalUser = mkOption { type = types.bool; default = false; };
      group = mkOption { type = types.str; default = ""; };
      extraGroups = mkOption { type = types.listOf types.str; default = [ ]; };
      home = mkOption { type = types.path; default = "/var/empty"; };
      uid = mkOption { type = types.nullOr types.int; default = null; };
      openssh.authorizedKeys.keys = mkOption { type = types.listOf types.str; default = [ ]; };
    };
  });
  groupType = types.submodule ({ name, ... }: {
    options = {
      name = mkOption { type = types.str; default = name; };
      gid = mkOption { type = types.nullOr types.int; default = null; };
      members = mkOption { type = types.listOf types.str; default = [ ]; };
    };
  });

  fileSystemType = types.submodule ({ name, ... }: {
    options = {
      mountPoint = mkOption { type = types.str; default = name; };
      device = mkOption { type = types.nullOr types.str; default = null; };
      fsType = mkOption { type = types.str; default = "auto"; };
      options = mkOption { type = types.listOf types.str; default = [ "defaults" ]; };
    };
  });

  etcType = types.submodule ({ name, ... }: {
    options = {
      target = mkOption { type = types.str; default = name; };
      text = mkOption { type = types.nullOr types.lines; default = null; };
      source = mkOption { type = types.nullOr types.path; default = null; };
      mode = mkOption { type = types.str; default = "symlink"; };
    };
  });

  # nixpkgs.nix: nixpkgs.config merges recursively, as nixpkgs' own configType does.
  nixpkgsConfigType = lib.mkOptionType {
    name = "nixpkgs-config";
    check = lib.isAttrs;
    merge = _loc: defs: lib.foldr (def: acc: lib.recursiveUpdate acc def.value) { } defs;
  };

  # An exporter's common options (services/monitoring/prometheus/exporters.nix) plus the node
  # exporter's own (exporters/node.nix). There is no textfile option: flags go through extraFlags.
  nodeExporterType = types.submodule {
    options = {
      enable = mkEnableOption "the prometheus node exporter";
      port = mkOption { type = types.port; default = 9100; };
      listenAddress = mkOption { type = types.str; default = "0.0.0.0"; };
      extraFlags = mkOption { type = types.listOf types.str; default = [ ]; };
      openFirewall = mkOption { type = types.bool; default = false; };
      user = mkOption { type = types.str; default = "node-exporter"; };
      group = mkOption { type = types.str; default = "node-exporter"; };
      enabledCollectors = mkOption { type = types.listOf types.str; default = [ ]; };
      disabledCollectors = mkOption { type = types.listOf types.str; default = [ ]; };
    };
  };
in
[
  # misc/assertions.nix
  {
    options.assertions = mkOption { type = types.listOf types.unspecified; internal = true; default = [ ]; };
    options.warnings = mkOption { type = types.listOf types.str; internal = true; default = [ ]; };
  }

  # misc/nixpkgs.nix: the host's package set from its own config and overlays.
  ({ config, ... }: {
    options.nixpkgs = {
      config = mkOption { type = nixpkgsConfigType; default = { }; };
      overlays = mkOption { type = types.listOf (types.functionTo (types.functionTo types.unspecified)); default = [ ]; };
      system = mkOption { type = types.str; default = "x86_64-linux"; };
      hostPlatform = mkOption { type = types.either types.str types.attrs; default = config.nixpkgs.system; };
    };
    config._module.args.pkgs = stubPkgs {
      inherit (config.nixpkgs) config overlays;
      system = config.nixpkgs.system;
    };
  })

  # system/activation/top-level.nix and misc/version.nix
  ({ config, pkgs, ... }: {
    options.system = {
      stateVersion = mkOption { type = types.str; };
      build = mkOption { type = types.lazyAttrsOf types.unspecified; default = { }; };
    };
    config.system.build.toplevel =
      let failed = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
      in if failed == [ ] then pkgs.stubDerivation "nixos-system-${config.networking.hostName}" { }
      else throw "\nFailed assertions:\n${lib.concatMapStringsSep "\n" (m: "- ${m}") failed}";
  })

  { options.networking.hostName = mkOption { type = types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$"; default = "nixos"; }; }

  # config/users-groups.nix
  ({ config, ... }: {
    options.users = {
      users = mkOption { type = types.attrsOf userType; default = { }; };
      groups = mkOption { type = types.attrsOf groupType; default = { }; };
    };
    config.assertions = lib.flatten (lib.mapAttrsToList (name: user: [
      {
        assertion = lib.xor user.isNormalUser user.isSystemUser;
        message = "Exactly one of users.users.${name}.isSystemUser and users.users.${name}.isNormalUser must be set.";
      }
      {
        assertion = user.group != "";
        message = "users.users.${name}.group is unset. This used to default to nogroup, but this is unsafe. "
          + "For example you can create a group for this user with: users.users.${name}.group = \"${name}\"; "
          + "users.groups.${name} = {};";
      }
    ]) config.users.users);
  })

  # system/boot/systemd.nix, systemd/tmpfiles.nix
  {
    options.systemd = {
      services = mkOption { type = types.attrsOf serviceType; default = { }; };
      timers = mkOption { type = types.attrsOf timerType; default = { }; };
      tmpfiles.rules = mkOption { type = types.listOf types.str; default = [ ]; };
    };
  }

  # config/system-environment.nix, system/etc/etc.nix, config/system-path.nix
  {
    options.environment = {
      systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };
      sessionVariables = mkOption { type = types.attrsOf (types.either types.str (types.listOf types.str)); default = { }; };
      variables = mkOption { type = types.attrsOf (types.either types.str (types.listOf types.str)); default = { }; };
      etc = mkOption { type = types.attrsOf etcType; default = { }; };
    };
  }

  # config/nix.nix: settings are freeform; lists concatenate.
  {
    options.nix.settings = mkOption {
      type = types.submodule { freeformType = types.attrsOf (types.oneOf [ types.bool types.int types.str (types.listOf types.str) ]); };
      default = { };
    };
  }

  # tasks/filesystems.nix, system/boot/loader/{systemd-boot,grub,efi}
  ({ config, ... }: {
    options.fileSystems = mkOption { type = types.attrsOf fileSystemType; default = { }; };
    options.boot.loader = {
      efi.efiSysMountPoint = mkOption { type = types.str; default = "/boot"; };
      efi.canTouchEfiVariables = mkOption { type = types.bool; default = false; };
      systemd-boot.enable = mkOption { type = types.bool; default = false; };
      systemd-boot.configurationLimit = mkOption { type = types.nullOr types.int; default = null; };
      grub.enable = mkOption { type = types.bool; default = true; };
      grub.device = mkOption { type = types.str; default = ""; };
      grub.devices = mkOption { type = types.listOf types.str; default = [ ]; };
      grub.configurationLimit = mkOption { type = types.int; default = 100; };
    };
    config = {
      boot.loader.grub.enable = mkIf config.boot.loader.systemd-boot.enable (mkDefault false);
      boot.loader.grub.devices = lib.optional (config.boot.loader.grub.device != "") config.boot.loader.grub.device;
      assertions = [{
        assertion = !config.boot.loader.grub.enable || config.boot.loader.grub.devices != [ ];
        message = "You must set the option ‘boot.loader.grub.devices’ or 'boot.loader.grub.mirroredBoots' to make the system bootable.";
      }];
    };
  })

  # What nixos-generate-config's output sets: system/boot/kernel.nix, stage-1.nix, config/swap.nix,
  # tasks/network-interfaces.nix, hardware/cpu/*-microcode.nix, hardware/all-firmware.nix.
  {
    options.boot = {
      initrd.availableKernelModules = mkOption { type = types.listOf types.str; default = [ ]; };
      initrd.kernelModules = mkOption { type = types.listOf types.str; default = [ ]; };
      kernelModules = mkOption { type = types.listOf types.str; default = [ ]; };
      extraModulePackages = mkOption { type = types.listOf types.package; default = [ ]; };
      kernelParams = mkOption { type = types.listOf types.str; default = [ ]; };
    };
    options.swapDevices = mkOption { type = types.listOf (types.submodule {
      options.device = mkOption { type = types.str; };
      options.size = mkOption { type = types.nullOr types.int; default = null; };
    }); default = [ ]; };
    options.networking.useDHCP = mkOption { type = types.bool; default = true; };
    options.networking.interfaces = mkOption {
      type = types.attrsOf (types.submodule { options.useDHCP = mkOption { type = types.nullOr types.bool; default = null; }; });
      default = { };
    };
    options.hardware.enableRedistributableFirmware = mkOption { type = types.bool; default = false; };
    options.hardware.cpu.intel.updateMicrocode = mkOption { type = types.bool; default = false; };
    options.hardware.cpu.amd.updateMicrocode = mkOption { type = types.bool; default = false; };
  }

  # services/networking/firewall.nix (iptables: extraCommands) and firewall-nftables.nix
  # (extraInputRules, only with networking.nftables.enable), services/networking/nftables.nix.
  {
    options.networking.firewall = {
      enable = mkOption { type = types.bool; default = true; };
      allowedTCPPorts = mkOption { type = types.listOf types.port; default = [ ]; };
      extraCommands = mkOption { type = types.lines; default = ""; };
      extraStopCommands = mkOption { type = types.lines; default = ""; };
      extraInputRules = mkOption { type = types.lines; default = ""; };
    };
    options.networking.nftables.enable = mkOption { type = types.bool; default = false; };
  }

  # services/networking/ssh/sshd.nix
  {
    options.services.openssh = {
      enable = mkEnableOption "the OpenSSH secure shell daemon";
      settings = mkOption {
        type = types.submodule {
          freeformType = types.attrsOf (types.oneOf [ types.bool types.int types.str (types.listOf types.str) ]);
          options.PasswordAuthentication = mkOption { type = types.nullOr types.bool; default = true; };
          options.PermitRootLogin = mkOption {
            type = types.nullOr (types.enum [ "yes" "without-password" "prohibit-password" "forced-commands-only" "no" ]);
            default = "prohibit-password";
          };
        };
        default = { };
      };
    };
  }

  # hardware/graphics.nix, hardware/video/nvidia.nix, services/x11/xserver.nix
  ({ config, ... }: {
    options.hardware.graphics = {
      enable = mkEnableOption "hardware accelerated graphics drivers";
      extraPackages = mkOption { type = types.listOf types.package; default = [ ]; };
    };
    options.hardware.nvidia.open = mkOption { type = types.nullOr types.bool; default = null; };
    options.services.xserver.videoDrivers = mkOption { type = types.listOf types.str; default = [ "modesetting" "fbdev" ]; };
    config.assertions = lib.optional (lib.elem "nvidia" config.services.xserver.videoDrivers) {
      assertion = config.hardware.nvidia.open != null;
      message = "You must configure `hardware.nvidia.open` on NVIDIA driver versions >= 560.";
    };
  })

  # services/monitoring/prometheus/exporters.nix (node only)
  { options.services.prometheus.exporters.node = mkOption { type = nodeExporterType; default = { }; }; }

  # services/misc/ollama.nix. 2026 ("modelsDir"): acceleration removed (the package picks it), models
  # renamed modelsDir (the old name a deprecated alias), DynamicUser unless user is set, render group
  # and char-drm already granted. Before ("models"): the models option, and acceleration (null by
  # default: the package as given).
  ({ config, pkgs, ... }:
    let
      cfg = config.services.ollama;
      staticUser = cfg.user != null && cfg.group != null;
      modelsDir = if ollamaShape == "models" then cfg.models else cfg.modelsDir;
      # Before: the module ran `cfg.package.override { inherit (cfg) acceleration; }`, not the package given.
      ollamaPackage = if ollamaShape == "models" then cfg.package.override { inherit (cfg) acceleration; } else cfg.package;
    in
    {
      imports = lib.optionals (ollamaShape == "modelsDir") [
        (lib.mkRenamedOptionModule [ "services" "ollama" "models" ] [ "services" "ollama" "modelsDir" ])
        (lib.mkRemovedOptionModule [ "services" "ollama" "acceleration" ]
          "Set `services.ollama.package` to `pkgs.ollama-vulkan`, `pkgs.ollama-cuda`, `pkgs.ollama-rocm` or `pkgs.ollama-cpu` instead.")
        (lib.mkRemovedOptionModule [ "services" "ollama" "listenAddress" ] "Use `services.ollama.host` and `services.ollama.port` instead.")
      ];
      options.services.ollama = {
        enable = mkEnableOption "ollama server for local large language models";
        package = lib.mkPackageOption pkgs "ollama" { };
        user = mkOption { type = types.nullOr types.str; default = null; };
        group = mkOption { type = types.nullOr types.str; default = cfg.user; };
        home = mkOption { type = types.str; default = "/var/lib/ollama"; };
      } // (if ollamaShape == "models" then {
        models = mkOption { type = types.str; default = "${cfg.home}/models"; };
        acceleration = mkOption { type = types.nullOr (types.enum [ false "rocm" "cuda" ]); default = null; };
      } else {
        modelsDir = mkOption { type = types.str; default = "${cfg.home}/models"; };
      }) // {
        host = mkOption { type = types.str; default = "127.0.0.1"; };
        port = mkOption { type = types.port; default = 11434; };
        environmentVariables = mkOption { type = types.attrsOf types.str; default = { }; };
        loadModels = mkOption { type = types.listOf types.str; default = [ ]; };
        syncModels = mkOption { type = types.bool; default = false; };
        openFirewall = mkOption { type = types.bool; default = false; };
      };
      config = mkIf cfg.enable {
        users = mkIf staticUser {
          users.${cfg.user} = { inherit (cfg) home; isSystemUser = true; group = cfg.group; };
          groups.${cfg.group} = { };
        };
        systemd.services.ollama = {
          description = "Server for local large language models";
          wantedBy = [ "multi-user.target" ];
          after = [ "network.target" ];
          environment = cfg.environmentVariables // {
            HOME = cfg.home;
            OLLAMA_MODELS = modelsDir;
            OLLAMA_HOST = "${cfg.host}:${toString cfg.port}";
          };
          serviceConfig = lib.optionalAttrs staticUser { User = cfg.user; Group = cfg.group; } // {
            Type = "exec";
            DynamicUser = true;
            ExecStart = "${lib.getExe ollamaPackage} serve";
            StateDirectory = [ "ollama" ];
            DeviceAllow = [ "char-nvidiactl" "char-nvidia-caps" "char-nvidia-frontend" "char-nvidia-uvm" "char-drm" "char-fb" "char-kfd" "/dev/dxg" ];
            DevicePolicy = "closed";
            SupplementaryGroups = [ "render" ];
          };
        };
        systemd.services.ollama-model-loader = mkIf (cfg.loadModels != [ ] || cfg.syncModels) {
          description = "Download ollama models in the background";
          wantedBy = [ "multi-user.target" "ollama.service" ];
          after = [ "ollama.service" "network-online.target" ];
          bindsTo = [ "ollama.service" ];
          script = "${lib.getExe ollamaPackage} pull ${lib.escapeShellArgs cfg.loadModels}";
        };
        environment.systemPackages = [ ollamaPackage ];
      };
    })
]
