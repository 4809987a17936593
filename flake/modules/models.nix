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
in
{
  # What this module reads, so that it also works alone (the module system imports a path once).
  imports = [ ./ollama.nix ./fleet.nix ];

  options.services.ipex-fleet.models = {
    files = mkOption {
      type = types.listOf fileModel;
      default = [ ];
      description = "ComfyUI model files, fetched into the store and linked into models/<kind>/.";
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
    ++ [{
      assertion = cfg.ollama == [ ] || config.services.ipex-ollama.enable;
      message = "services.ipex-fleet.models.ollama needs services.ipex-ollama.enable = true";
    }];

    systemd.tmpfiles.rules = map (m: "L+ ${modelsDir}/${m.kind}/${m.name} - - - - ${fetched m}") cfg.files;
  };
}
