# Intel XPU packages, scoped under pkgs.intel-xpu so they never replace nixpkgs' own.
#
# The XPU Python is MordragT/nixos' `intel-python` (the seeds' Intel source): python313 whose torch
# is built for XPU (SYCL, Level Zero). nixpkgs' own torch has no XPU support. IPEX is end-of-life
# (last release 2.8): upstream torch.xpu is the default path and IPEX is only there on request.
#
# What is proven, and how (the modules say the same):
# - CPU hosts: nixpkgs' torch. Evaluated through lib.evalModules (tests/nixeval); the probe and
#   bench run on CPU torch in the lab.
# - CUDA hosts: nixpkgs' torch under nixpkgs.config.cudaSupport. Evaluated; the probe and bench
#   run on an H100 through the same device-generic code.
# - XPU hosts: intel-python's torch, for the probe and for ComfyUI. Evaluated only: no Intel GPU
#   and no nixpkgs build here, so neither the build nor a run on an XPU is proven.
{ intel-xpu }:
final: prev:
let
  inherit (final) lib;
  system = final.stdenv.hostPlatform.system;
  upstream = intel-xpu.packages.${system} or { };
  # intel-python and intel-dpcpp are legacyPackages attributes, not packages.
  legacy = intel-xpu.legacyPackages.${system} or { };
  unavailable = what: throw "pkgs.intel-xpu.${what} is unavailable: the intel-xpu input (MordragT/nixos) "
    + "provides no ${what} for ${system}";
  python = legacy.intel-python or (unavailable "python");
  # nixpkgs' comfyui builds its Python with `python3.override { packageOverrides = ... }`, which
  # would replace intel-python's own overrides (and with them its XPU torch): keep intel-python.
  pinnedPython = python // { override = _: python; };
in
{
  intel-xpu = {
    inherit python;
    torch = python.pkgs.torch;
    # IPEX itself (end-of-life: last release 2.8, archived 2026-03; it must match torch exactly).
    ipex = python.pkgs.ipex or (unavailable "ipex");
    # Optional, legacy (end-of-life): the Intel Python environment with IPEX.
    ipexPython = if legacy ? intel-python && legacy.intel-python ? pkgs.ipex
      then legacy.intel-python.withPackages (ps: [ ps.ipex ]) else null;
    mkl = upstream.intel-mkl or (unavailable "mkl");
    # ComfyUI on the XPU torch, through whichever argument the user's nixpkgs' comfyui takes
    # (python3 or python3Packages: both were seen); null where that nixpkgs has no comfyui (before
    # 2026-07), which services.ipex-comfyui refuses in one assertion.
    comfyui =
      let args = lib.functionArgs final.comfyui.override;
      in if !(prev ? comfyui) then null
      else if args ? python3 then final.comfyui.override { python3 = pinnedPython; }
      else if args ? python3Packages then final.comfyui.override { python3Packages = python.pkgs; }
      else throw "pkgs.intel-xpu.comfyui: nixpkgs' comfyui takes neither python3 nor python3Packages "
        + "(it takes ${lib.concatStringsSep ", " (lib.attrNames args)}); set services.ipex-comfyui.package";
    # Ollama reaches Intel GPUs through Vulkan upstream; the SYCL build (0.3.10, 2024) stays an option.
    ollama = final.ollama-vulkan;
    ollamaSycl = upstream.ollama-sycl or null;
  };
  # The seeds' name for ComfyUI on Intel GPUs.
  comfyui-ipex = final.intel-xpu.comfyui;
  # ComfyUI custom node packages (services.ipex-comfyui.nodes.enable).
  comfyui-nodes = import ../packages/comfyui-nodes.nix { inherit (final) lib stdenvNoCC fetchFromGitHub; };
}
