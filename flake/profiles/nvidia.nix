# NVIDIA hosts: CUDA torch and Ollama's CUDA build.
{ lib, ... }:
{
  imports = [ ./common.nix ];
  hardware.nvidia.open = true;
  services.xserver.videoDrivers = [ "nvidia" ];
  hardware.graphics.enable = true;
  nixpkgs.config.allowUnfree = true;
  # nixpkgs builds torch (ComfyUI's, and the probe's through the host's own package set) with CUDA
  # only under cudaSupport; without it ComfyUI dies at start: "Torch not compiled with CUDA enabled".
  nixpkgs.config.cudaSupport = true;
  services.ipex-fleet.accelerator = "cuda";
  services.ipex-ollama = { enable = true; acceleration = "cuda"; smokeModel = "llama3.2:1b"; };
  services.ipex-comfyui = { enable = true; acceleration = "cuda"; optimisation.precision = lib.mkDefault "bf16"; };
}
