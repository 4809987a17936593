# Declarative models: files fetched into the Nix store by sha256 and linked into ComfyUI's
# model folders, and Ollama models pulled at start by nixpkgs' services.ollama.loadModels (set by ollama.nix).
# The alternative is installing them at run time (`models:` in host data); never both for a file.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.ipex-fleet.models;
  inherit (lib) mkOption types;
  kinds = [ "checkpoints" "loras" "vae" "text_encoders" "diffusion_models" "controlnet"
            "upscale_models" "embeddings" "clip_vision" ];
  validName = name: builtins.match "[A-Za-z0-9][A-Za-z0-9._+-]*" name != null;
  fileModel = types.submodule {
    options = {
      kind = mkOption { type = types.enum kinds; description = "The ComfyUI models/ folder."; };
      name = mkOption { type = types.str; description = "File name in that folder (no path separators)."; };
      url = mkOption { type = types.str; description = "Where to fetch it (https)."; };
      sha256 = mkOption { type = types.str; description = "Its sha256, hex or SRI."; };
    };
  };
  fetched = m: pkgs.fetchurl { inherit (m) url; name = m.name; hash =
    if lib.hasPrefix "sha256-" m.sha256 then m.sha256 else "sha256:${m.sha256}"; };
  modelsDir = config.services.ipex-fleet.services.comfyui.models or "/var/lib/comfyui/models";
  hex = m: builtins.match "[0-9a-f]{64}" m.sha256 != null;
  # The installer's plan (ipex_fleet.host.models.manifest.ModelPlan).
  plan = {
    files = map (m: { inherit (m) kind name url sha256; size = null; }) cfg.files;
    ollama = [ ];
    prune = [ ];
    prune_foreign = false;
    source = "mirror";
  };
in
{
  # What this module reads, so that it also works alone (the module system imports a path once).
  imports = [ ./ollama.nix ./comfyui.nix ./fleet.nix ];

  options.services.ipex-fleet.models = {
    files = mkOption {
      type = types.listOf fileModel;
      default = [ ];
      description = "ComfyUI model files, fetched into the store and linked into models/<kind>/.";
    };
    autoDownload = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Download `files` when ComfyUI starts, with ipex-fleet's verified installer (sha256 checked,
        written beside the folder and renamed into place, resumed after a break), instead of fetching
        them into the Nix store at build time. ComfyUI starts once they are in place.
      '';
    };
    ollama = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "llama3.2:1b" ];
      description = "Ollama models to pull when the service starts.";
    };
  };

  config = {
    assertions = map
      (m: {
        assertion = validName m.name && lib.hasPrefix "https://" m.url;
        message = "services.ipex-fleet.models.files: ${m.name} needs a plain file name and an https URL";
      })
      cfg.files
    ++ [
      {
        assertion = cfg.ollama == [ ] || config.services.ipex-ollama.enable;
        message = "services.ipex-fleet.models.ollama needs services.ipex-ollama.enable = true";
      }
      {
        assertion = !cfg.autoDownload || (config.services.ipex-fleet.enable && config.services.ipex-comfyui.enable);
        message = "services.ipex-fleet.models.autoDownload needs services.ipex-fleet.enable (the installer) "
          + "and services.ipex-comfyui.enable (the service whose start it precedes)";
      }
      {
        assertion = !cfg.autoDownload || lib.all hex cfg.files;
        message = "services.ipex-fleet.models.autoDownload: the installer checks hex sha256 digests; give "
          + lib.concatMapStringsSep ", " (m: m.name) (lib.filter (m: !hex m) cfg.files) + " as 64 hex digits";
      }
    ];

    # Fetched into the store at build time, or downloaded at service start: never both for a file.
    systemd.tmpfiles.rules = lib.optionals (!cfg.autoDownload)
      (map (m: "L+ ${modelsDir}/${m.kind}/${m.name} - - - - ${fetched m}") cfg.files);

    environment.etc."ipex-fleet/models-plan.json" = lib.mkIf cfg.autoDownload { text = builtins.toJSON plan; };
    systemd.services.ipex-fleet-models = lib.mkIf (cfg.autoDownload && cfg.files != [ ]) {
      description = "ipex-fleet: download the declared ComfyUI models (verified) before ComfyUI starts";
      wantedBy = [ "comfyui.service" ];
      before = [ "comfyui.service" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = "${lib.getExe config.services.ipex-fleet.package} models install --plan /etc/ipex-fleet/models-plan.json";
        TimeoutStartSec = "6h";
      };
    };
    systemd.services.comfyui = lib.mkIf (cfg.autoDownload && cfg.files != [ ]) {
      requires = [ "ipex-fleet-models.service" ];
      after = [ "ipex-fleet-models.service" ];
    };
  };
}
