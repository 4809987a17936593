# programs.comfyui-ipex: a ComfyUI workspace for a developer (home-manager): ComfyUI on the
# environment's accelerator on PATH, a workspace whose models/ folders link to where the models
# live, and the example workflows (txt2img, ControlNet) in ComfyUI's API format.
{ config, lib, pkgs, ipexFleet, ... }:

let
  cfg = config.programs.comfyui-ipex;
  inherit (lib) mkEnableOption mkIf mkOption types;
  ipexPkgs = pkgs.extend ipexFleet.overlay;
  accelerator = config.programs.ipex.accelerator or "cpu";
  # ComfyUI's model folders (REFERENCE.md).
  kinds = [ "checkpoints" "loras" "vae" "text_encoders" "diffusion_models" "controlnet"
            "upscale_models" "embeddings" "clip_vision" ];
  unknownKinds = lib.subtractLists kinds (lib.attrNames cfg.models.symlinks);
  # Home-relative, as home.file takes it ("~/x" and "x" both mean $HOME/x).
  workspace = lib.removePrefix "~/" cfg.workspace.directory;
  workflows = builtins.readDir ../workflows;
in
{
  imports = [ ./ipex.nix ];

  options.programs.comfyui-ipex = {
    enable = mkEnableOption "a ComfyUI workspace with linked model folders and example workflows";

    package = mkOption {
      type = types.nullOr types.package;
      # null where the nixpkgs in use has no comfyui (before 2026-07): refused by an assertion.
      default = if accelerator == "xpu" then ipexPkgs.intel-xpu.comfyui else pkgs.comfyui or null;
      defaultText = lib.literalExpression "pkgs.intel-xpu.comfyui on xpu, else pkgs.comfyui";
      description = "ComfyUI, on the accelerator of programs.ipex.";
    };

    workspace.directory = mkOption {
      type = types.str;
      default = "~/comfyui-workspace";
      description = "The workspace, inside the home directory (`~/...` or relative to it).";
    };

    models.symlinks = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = { checkpoints = "~/ai-models/checkpoints"; controlnet = "/srv/models/controlnet"; };
      description = ''
        ComfyUI model folders (checkpoints, loras, vae, text_encoders, diffusion_models, controlnet,
        upscale_models, embeddings, clip_vision) linked into the workspace's models/ from where the
        models live.
      '';
    };

    workflows.enable = mkOption {
      type = types.bool;
      default = true;
      description = "Link the example workflows (API format) into the workspace's workflows/.";
    };

    development.enable = mkEnableOption "editor settings for the workspace (VS Code: JSON schema-free workflow files)";
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.package != null;
        message = "programs.comfyui-ipex needs pkgs.comfyui, which your nixpkgs lacks (it came to nixpkgs in "
          + "2026-07): update nixpkgs, or set programs.comfyui-ipex.package";
      }
      {
        assertion = unknownKinds == [ ];
        message = "programs.comfyui-ipex.models.symlinks: unknown model folder(s) ${lib.concatStringsSep ", " unknownKinds}; "
          + "ComfyUI's are ${lib.concatStringsSep ", " kinds}";
      }
      {
        assertion = !lib.hasPrefix "/" workspace && !lib.hasInfix ".." workspace;
        message = "programs.comfyui-ipex.workspace.directory = ${cfg.workspace.directory}: give a path inside "
          + "the home directory, such as ~/comfyui-workspace";
      }
    ];

    home.packages = lib.optional (cfg.package != null) cfg.package;

    home.file =
      lib.mapAttrs'
        (kind: path: lib.nameValuePair "${workspace}/models/${kind}" {
          source = config.lib.file.mkOutOfStoreSymlink
            (if lib.hasPrefix "~/" path then "${config.home.homeDirectory}/${lib.removePrefix "~/" path}" else path);
        })
        cfg.models.symlinks
      // lib.optionalAttrs cfg.workflows.enable (lib.mapAttrs'
        (name: _: lib.nameValuePair "${workspace}/workflows/${name}" { source = ../workflows + "/${name}"; })
        (lib.filterAttrs (name: _: lib.hasSuffix ".json" name) workflows))
      // {
        "${workspace}/input/.keep".text = "";
        "${workspace}/output/.keep".text = "";
      };

    programs.vscode = mkIf cfg.development.enable {
      enable = true;
      profiles.default.userSettings."files.associations" = { "${config.home.homeDirectory}/${workspace}/workflows/*.json" = "json"; };
    };
  };
}
