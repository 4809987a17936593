# Ollama on nixpkgs' own services.ollama: this module only picks the Intel path (Vulkan, or
# the SYCL build when asked) and wires render access and the XPU environment.
{ config, lib, pkgs, options, ... }:

let
  cfg = config.services.ipex-ollama;
  defaults = (builtins.fromJSON (builtins.readFile ../lib/defaults.json)).ollama;
  inherit (lib) mkEnableOption mkIf mkOption types;
in
{
  # What this module reads, so that it also works alone (the module system imports a path once).
  imports = [ ./ipex.nix ./fleet.nix ];

  options.services.ipex-ollama = {
    enable = mkEnableOption "Ollama on an Intel GPU host, through nixpkgs' services.ollama";

    acceleration = mkOption {
      type = types.enum [ "auto" "cpu" "xpu" "cuda" ];
      default = "auto";
      description = ''
        auto: xpu when services.ipex is enabled, else cpu. xpu uses Ollama's Vulkan backend
        (upstream's path to Intel GPUs) unless `sycl` is set.
      '';
    };

    sycl = mkOption {
      type = types.bool;
      default = false;
      description = "Use the SYCL build from the intel-xpu input instead of Vulkan (xpu only).";
    };

    host = mkOption {
      type = types.str;
      default = defaults.host;
      description = "Address Ollama listens on.";
    };

    port = mkOption {
      type = types.port;
      default = defaults.port;
      description = "Port Ollama listens on.";
    };

    modelsPath = mkOption {
      type = types.path;
      default = defaults.models;
      description = "OLLAMA_MODELS: where pulled models live.";
    };

    smokeModel = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "llama3.2:1b";
      description = "A small model the health check generates with (level 2); null skips that check.";
    };
  };

  config = mkIf cfg.enable (
    let
      effective = if cfg.acceleration == "auto"
        then (if config.services.ipex.enable then "xpu" else "cpu")
        else cfg.acceleration;
      package =
        if effective == "xpu" then (if cfg.sycl then pkgs.intel-xpu.ollamaSycl else pkgs.intel-xpu.ollama)
        else if effective == "cuda" then pkgs.ollama-cuda
        else pkgs.ollama;
    in
    {
      assertions = [
        {
          assertion = effective != "xpu" || config.services.ipex.enable;
          message = "services.ipex-ollama.acceleration = xpu needs services.ipex.enable = true";
        }
        {
          assertion = !cfg.sycl || pkgs.intel-xpu.ollamaSycl != null;
          message = "services.ipex-ollama.sycl needs the intel-xpu input to provide ollama-sycl";
        }
      ];

      services.ollama = {
        enable = true;
        inherit package;
        inherit (cfg) host port;
        # The health check generates with the smoke model: pull it at start with the declared ones
        # (services.ipex-fleet.models.ollama, where the models module is imported), each once.
        loadModels = lib.unique (lib.optional (cfg.smokeModel != null) cfg.smokeModel
          ++ (config.services.ipex-fleet.models.ollama or [ ]));
        environmentVariables = lib.optionalAttrs (effective == "xpu") config.services.ipex.environment;
      }
      # nixpkgs renamed `models` to `modelsDir` (PR #537550, 2026-07; the old name a deprecated alias
      # there): set the name the user's nixpkgs has, so neither pin warns or fails.
      // (if options.services.ollama ? modelsDir then { modelsDir = cfg.modelsPath; } else { models = cfg.modelsPath; });

      systemd.services.ollama.serviceConfig = lib.mkMerge [
        (lib.mkIf (effective == "xpu") {
          SupplementaryGroups = [ "render" "video" ];
          DeviceAllow = [ "char-drm rw" ];
        })
        {
          # nixpkgs' module before 2026 runs `package.override { acceleration = cfg.acceleration; }`,
          # null by default: a CPU (or CUDA) build in place of the Vulkan one. Run the package chosen
          # here, whatever the user's nixpkgs does with it (the same command as today's module's).
          ExecStart = lib.mkForce "${lib.getExe package} serve";
        }
      ];

      services.ipex-fleet.services.ollama = {
        url = "http://${cfg.host}:${toString cfg.port}";
        models = cfg.modelsPath;
        unit = defaults.unit;
        smokeModel = cfg.smokeModel;
        accelerator = effective;
      };
    }
  );
}
