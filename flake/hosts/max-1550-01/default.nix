# Intel Data Center GPU Max 1550: two stacks, both used; bf16 on the matrix engines.
# Its hardware (disks, kernel modules) is hardware-configuration.nix beside this file, which
# lib/hosts.nix adds to the host.
{ ... }:
{
  imports = [ ../../profiles/intel-arc.nix ];
  boot.loader.systemd-boot.enable = true;
  boot.loader.efi.canTouchEfiVariables = true;
  services.ipex-fleet.minDevices = 2;
  services.ipex-comfyui.optimisation = { level = "O2"; precision = "bf16"; };
}
