# Intel XPU packages, scoped under pkgs.intel-xpu so they never replace nixpkgs' own.
# IPEX is end-of-life (last release 2.8): upstream torch's torch.xpu is the default path,
# and IPEX is offered only where a host asks for it.
{ intel-xpu }:
final: prev:
let
  system = final.stdenv.hostPlatform.system;
  upstream = intel-xpu.packages.${system} or { };
  # intel-python (a python313.override with IPEX at .pkgs.ipex) is a legacyPackages attribute.
  legacy = intel-xpu.legacyPackages.${system} or { };
in
{
  intel-xpu = {
    # Upstream PyTorch with XPU support: the default for ComfyUI and the probe.
    python = final.python3;
    torch = final.python3Packages.torch;
    # Optional, legacy: the Intel Python set with IPEX, when the input provides it.
    ipexPython = let p = legacy.intel-python or null;
      in if p != null && p ? pkgs.ipex then p.withPackages (ps: [ ps.ipex ]) else null;
    # Ollama reaches Intel GPUs through Vulkan upstream; the SYCL build stays an option.
    ollama = final.ollama-vulkan or final.ollama;
    ollamaSycl = upstream.ollama-sycl or null;
  };
}
