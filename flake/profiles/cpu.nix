# CPU-only hosts: the same services, no accelerator required.
{ lib, ... }:
{
  imports = [ ./common.nix ];
  services.ipex-fleet.accelerator = "cpu";
  services.ipex-ollama = { enable = true; acceleration = "cpu"; };
  services.ipex-comfyui = { enable = true; acceleration = "cpu"; optimisation.precision = lib.mkDefault "fp32"; };
}
