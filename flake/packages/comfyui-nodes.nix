# ComfyUI custom node packages, fetched by a fixed revision and hash (their sources are not copied
# into this repository), linked into custom_nodes/ by services.ipex-comfyui.nodes.enable.
# Revisions and hashes as published in nixpkgs (ultimate-sd-upscale, pkgs/by-name/co/comfyui/
# custom-nodes.nix) and in public flakes (controlnet-aux); they could not be fetched here.
# Their Python dependencies must come from ComfyUI's environment: a node whose imports are missing
# is skipped by ComfyUI at start ("IMPORT FAILED"), the rest keeps running.
{ lib, stdenvNoCC, fetchFromGitHub }:
let
  mkNode = { pname, version, src, description, pythonDependencies ? [ ] }: stdenvNoCC.mkDerivation {
    inherit pname version src;
    dontBuild = true;
    installPhase = ''
      runHook preInstall
      mkdir -p $out
      cp -r ./. $out/
      runHook postInstall
    '';
    passthru = { inherit pythonDependencies; };
    meta = { inherit description; platforms = lib.platforms.linux; };
  };
in
{
  # ControlNet auxiliary preprocessors (Canny, depth, pose, lineart, ...).
  controlnet-aux = mkNode {
    pname = "comfyui-controlnet-aux";
    version = "1.1.3-unstable-2025-12-10";
    src = fetchFromGitHub {
      owner = "Fannovel16";
      repo = "comfyui_controlnet_aux";
      rev = "136f125c89aed92ced1b6fbb491e13719b72fcc0";
      hash = "sha256-DlspkqzN7Ls8kXWQMtVQygzsgu/z6FtjMqDthuza/Kc=";
    };
    description = "ComfyUI nodes that make ControlNet hint images";
    pythonDependencies = [ "einops" "opencv4" "scikit-image" "matplotlib" "scipy" ];
  };
  # Tiled upscaling with a diffusion pass (Ultimate SD Upscale).
  upscaling = mkNode {
    pname = "comfyui-ultimate-sd-upscale";
    version = "unstable-2023-08-16";
    src = fetchFromGitHub {
      owner = "ssitu";
      repo = "ComfyUI_UltimateSDUpscale";
      rev = "6ea48202a76ccf5904ddfa85f826efa80dd50520";
      hash = "sha256-fUZ0AO+LARa+x30Iu+8jvEDun4T3f9G0DOlB2XNxY9Q=";
      fetchSubmodules = true;
    };
    description = "ComfyUI nodes for tiled upscaling";
  };
}
