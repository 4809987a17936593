# Intel Arc (A770, B580) and Data Center GPU (Flex, Max) hosts: XPU torch, Ollama on Vulkan.
{ ... }:
{
  imports = [ ./common.nix ];
  services.ipex = {
    enable = true;
    renderUsers = [ "ollama" ];
  };
  services.ipex-ollama = { enable = true; smokeModel = "llama3.2:1b"; };
  services.ipex-comfyui = { enable = true; optimisation.precision = "fp16"; };
  services.ipex-fleet.models.ollama = [ "llama3.2:1b" ];
}
