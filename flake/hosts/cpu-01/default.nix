# A CPU-only host (Ollama and ComfyUI on the CPU).
# Its hardware (disks, kernel modules) is hardware-configuration.nix beside this file, which
# lib/hosts.nix adds to the host.
{ ... }:
{
  imports = [ ../../profiles/cpu.nix ];
  boot.loader.systemd-boot.enable = true;
  boot.loader.efi.canTouchEfiVariables = true;
  # The example fleet's Prometheus (inventories/prod.py's network): the node exporter is open to it only.
  services.ipex-fleet.metrics.allowFrom = [ "10.40.9.10" ];
}
