# ComfyUI as a hardened systemd service, on nixpkgs' comfyui package, with XPU (intel-python's
# torch from the intel-xpu input: evaluated, not proven on hardware), CUDA (nixpkgs' torch under
# cudaSupport) or CPU torch, and the seeds' options: acceleration, optimisation level, precision,
# models path and custom nodes. Listens on 127.0.0.1 unless told otherwise.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.ipex-comfyui;
  defaults = (builtins.fromJSON (builtins.readFile ../lib/defaults.json)).comfyui;
  inherit (lib) mkEnableOption mkIf mkOption types;

  effective = if cfg.acceleration == "auto"
    then (if config.services.ipex.enable then "xpu" else "cpu")
    else cfg.acceleration;

  # ComfyUI's own flags for each setting (flags that exist upstream today).
  optimisationFlags = {
    O0 = [ "--disable-smart-memory" ]; # --disable-ipex-optimize is gone upstream (ComfyUI PR #13653)
    O1 = [ ];
    O2 = [ "--use-pytorch-cross-attention" ];
    O3 = [ "--use-pytorch-cross-attention" "--highvram" ];
  }.${cfg.optimisation.level};
  precisionFlags = {
    fp32 = [ "--force-fp32" ];
    fp16 = [ "--force-fp16" ];
    bf16 = [ "--bf16-unet" "--bf16-vae" ];
    int8 = [ ];
  }.${cfg.optimisation.precision};
  deviceFlags =
    if effective == "cpu" then [ "--cpu" ]
    else if effective == "xpu" && config.services.ipex.deviceSelector != null
    then [ "--oneapi-device-selector" config.services.ipex.deviceSelector ]
    else [ ];

  knownNodes = lib.attrNames (lib.filterAttrs (_: lib.isDerivation) pkgs.comfyui-nodes);
  unknownNodes = lib.subtractLists knownNodes cfg.nodes.enable;
  nodePackages = cfg.customNodes
    ++ map (n: pkgs.comfyui-nodes.${n}) (lib.intersectLists knownNodes cfg.nodes.enable);
  customNodesDir = pkgs.linkFarm "comfyui-custom-nodes"
    (map (p: { name = p.pname or p.name; path = p; }) nodePackages);
  defaultModelsPath = "${cfg.dataDir}/models";
in
{
  # What this module reads, so that it also works alone (the module system imports a path once).
  imports = [ ./ipex.nix ./fleet.nix ];

  options.services.ipex-comfyui = {
    enable = mkEnableOption "ComfyUI on an Intel GPU (or CUDA, or CPU) host";

    package = mkOption {
      type = types.nullOr types.package;
      # nixpkgs' comfyui has CPU torch, or CUDA under cudaSupport; XPU needs intel-python's torch.
      # null where the user's nixpkgs has no comfyui (before 2026-07): refused by an assertion.
      default = if effective == "xpu" then pkgs.intel-xpu.comfyui else pkgs.comfyui or null;
      defaultText = lib.literalExpression ''if acceleration is xpu then pkgs.intel-xpu.comfyui else pkgs.comfyui'';
      description = "The ComfyUI package; its torch must support the acceleration (overlays/intel-xpu.nix).";
    };

    acceleration = mkOption {
      type = types.enum [ "auto" "cpu" "xpu" "cuda" ];
      default = "auto";
      description = "auto: xpu when services.ipex is enabled, else cpu.";
    };

    optimisation = {
      level = mkOption {
        type = types.enum [ "O0" "O1" "O2" "O3" ];
        default = "O1";
        description = "O0 conservative (no smart memory management); O1 ComfyUI defaults; O2 PyTorch SDPA attention; O3 also keeps models in VRAM.";
      };
      precision = mkOption {
        type = types.enum [ "fp32" "fp16" "bf16" "int8" ];
        default = "fp16";
        description = "Compute precision of the diffusion model and VAE.";
      };
      jitCompile = mkOption {
        type = types.bool;
        default = false;
        description = ''
          The seeds' JIT compilation (an IPEX feature). ComfyUI has no flag or environment for it;
          setting it is refused by an assertion. Compile in a workflow instead (the TorchCompileModel node).
        '';
      };
    };

    models.path = mkOption {
      type = types.path;
      default = defaultModelsPath;
      defaultText = lib.literalExpression ''"''${dataDir}/models"'';
      example = "/srv/models/comfyui";
      description = ''
        ComfyUI's models folder. Elsewhere than under `dataDir`, `dataDir/models` links to it. The
        probe and the model installer use it (through /etc/ipex-fleet/config.json).
      '';
    };

    nodes.enable = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "controlnet-aux" "upscaling" ];
      description = "Custom node packages of `pkgs.comfyui-nodes` to link into custom_nodes/, by name.";
    };

    host = mkOption {
      type = types.str;
      default = defaults.host;
      description = "Address ComfyUI listens on. Keep 127.0.0.1 and put a reverse proxy in front.";
    };

    port = mkOption {
      type = types.port;
      default = defaults.port;
      description = "Port ComfyUI listens on.";
    };

    dataDir = mkOption {
      type = types.path;
      default = builtins.dirOf defaults.models;
      description = "ComfyUI's base directory; models live in its models/ folder.";
    };

    customNodes = mkOption {
      type = types.listOf types.package;
      default = [ ];
      description = "Custom node packages, linked into custom_nodes/.";
    };

    customNodesDir = mkOption {
      type = types.package;
      readOnly = true;
      default = customNodesDir;
      defaultText = lib.literalExpression "a linkFarm of customNodes and nodes.enable";
      description = "What custom_nodes/ links to: every custom node package, by name.";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "More ComfyUI command-line arguments.";
    };

    memoryMax = mkOption {
      type = types.str;
      default = "80%";
      description = "systemd MemoryMax for the service.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.package != null;
        message = "services.ipex-comfyui needs pkgs.comfyui, which the nixpkgs this flake is locked to lacks "
          + "(it came to nixpkgs in 2026-07): update it with `nix flake update nixpkgs --flake ./flake` "
          + "(nixos-unstable from 2026-08 on), or set services.ipex-comfyui.package";
      }
      {
        assertion = effective != "xpu" || config.services.ipex.enable;
        message = "services.ipex-comfyui.acceleration = xpu needs services.ipex.enable = true";
      }
      {
        # nixpkgs builds torch with CUDA only under cudaSupport; without it ComfyUI stops at start.
        assertion = effective != "cuda" || (config.nixpkgs.config.cudaSupport or false);
        message = "services.ipex-comfyui.acceleration = cuda needs nixpkgs.config.cudaSupport = true "
          + "(nixpkgs' torch has no CUDA otherwise: \"Torch not compiled with CUDA enabled\")";
      }
      {
        assertion = unknownNodes == [ ];
        message = "services.ipex-comfyui.nodes.enable: unknown node package(s) ${lib.concatStringsSep ", " unknownNodes}; "
          + "known: ${lib.concatStringsSep ", " knownNodes}";
      }
      {
        assertion = !cfg.optimisation.jitCompile;
        message = "services.ipex-comfyui.optimisation.jitCompile is not available: ComfyUI has no JIT flag or "
          + "environment (IPEX's JIT went with IPEX); use the TorchCompileModel node in a workflow";
      }
      {
        assertion = cfg.optimisation.precision != "int8";
        message = "services.ipex-comfyui.optimisation.precision = int8 is not supported by upstream ComfyUI; use fp16 or bf16";
      }
    ];

    systemd.tmpfiles.rules = [ "L+ ${cfg.dataDir}/custom_nodes - - - - ${cfg.customNodesDir}" ]
      ++ lib.optional (cfg.models.path != defaultModelsPath) "L+ ${defaultModelsPath} - - - - ${cfg.models.path}";

    systemd.services.comfyui = {
      description = "ComfyUI (${effective})";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      environment = lib.optionalAttrs (effective == "xpu") config.services.ipex.environment // {
        HOME = cfg.dataDir;
      };
      serviceConfig = {
        ExecStart = lib.escapeShellArgs ([
          (if cfg.package != null then lib.getExe cfg.package else "comfyui")
          "--listen" cfg.host
          "--port" (toString cfg.port)
          "--base-directory" cfg.dataDir
          "--database-url" "sqlite:///${cfg.dataDir}/user/comfyui.db"
        ] ++ deviceFlags ++ optimisationFlags ++ precisionFlags ++ cfg.extraArgs);
        DynamicUser = true;
        StateDirectory = "comfyui";
        WorkingDirectory = cfg.dataDir;
        SupplementaryGroups = lib.optionals (effective == "xpu") [ "render" "video" ];
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        NoNewPrivileges = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectControlGroups = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        DevicePolicy = "closed";
        DeviceAllow =
          lib.optionals (effective == "xpu") [ "char-drm rw" ]
          ++ lib.optionals (effective == "cuda") [ "char-nvidiactl rw" "char-nvidia-frontend rw" "char-nvidia-uvm rw" ];
        MemoryMax = cfg.memoryMax;
        TasksMax = 4096;
        LimitNOFILE = 65536;
        Restart = "on-failure";
        RestartSec = 5;
      };
    };

    services.ipex-fleet.services.comfyui = {
      url = "http://${cfg.host}:${toString cfg.port}";
      models = cfg.models.path;
      unit = defaults.unit;
      accelerator = effective;
    };
  };
}
