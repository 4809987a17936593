# Intel Data Center GPU Max 1550: two stacks, both used; bf16 on the matrix engines.
# Its hardware (disks, kernel modules) is hardware-configuration.nix beside this file, which
# lib/hosts.nix adds to the host.
{ ... }:
{
  imports = [ ../../profiles/intel-arc.nix ];
  boot.loader.systemd-boot.enable = true;
  boot.loader.efi.canTouchEfiVariables = true;
  # The example fleet's Prometheus (inventories/prod.py's network): the node exporter is open to it only.
  services.ipex-fleet.metrics.allowFrom = [ "10.40.9.10" ];
  services.ipex-fleet.minDevices = 2;
  services.ipex-comfyui.optimisation = { level = "O2"; precision = "bf16"; };
}
