# A stand-in for MordragT/nixos (the seeds' Intel XPU source), with the outputs REFERENCE.md lists:
# packages.<system>.{ollama-sycl, intel-mkl}; legacyPackages.<system>.{intel-python, intel-dpcpp}.
# intel-python is python313.override { packageOverrides = ... }: its torch is built for XPU
# (pkgs/by-lang/intel-python/torch), torch-bin is the 2.9.1+xpu wheel, IPEX is at .pkgs.ipex.
# It is built from the input's own package set, not the host's.
{ stubPkgs }:
let
  pkgs = stubPkgs { config.allowUnfree = true; };
  intelPackages = self: super: {
    ipex = super.buildPythonPackage { pname = "intel-extension-for-pytorch"; version = "2.8.10"; dependencies = [ self.torch ]; };
    torch-bin = super.torch // { name = "python-torch-2.9.1+xpu"; stubAccelerator = "xpu"; };
  };
  intel-python = pkgs.stubPython { name = "python3.13"; torchAccelerator = "xpu"; extraPackages = intelPackages; };
in
{
  packages.x86_64-linux = {
    ollama-sycl = pkgs.stubDerivation "ollama-sycl-0.3.10" { meta.mainProgram = "ollama"; stubAccelerator = "xpu"; };
    intel-mkl = pkgs.stubDerivation "intel-mkl-2025.2" { };
  };
  legacyPackages.x86_64-linux = {
    inherit intel-python;
    intel-dpcpp = pkgs.stubDerivation "intel-dpcpp-2025.2" { };
  };
}
