# Intel Arc (A770, B580) and Data Center GPU (Flex, Max) hosts: XPU torch, Ollama on Vulkan.
{ lib, ... }:
{
  imports = [ ./common.nix ];
  # Ollama runs as a DynamicUser: the ipex-ollama module gives it the render group and char-drm.
  services.ipex.enable = true;
  services.ipex-ollama = { enable = true; smokeModel = "llama3.2:1b"; };
  services.ipex-comfyui = { enable = true; optimisation.precision = lib.mkDefault "fp16"; };
  services.ipex-fleet.models.ollama = [ "llama3.2:1b" ];
}
