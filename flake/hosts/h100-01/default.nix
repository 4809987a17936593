# NVIDIA H100 SXM.
# Its hardware (disks, kernel modules) is hardware-configuration.nix beside this file, which
# lib/hosts.nix adds to the host.
{ ... }:
{
  imports = [ ../../profiles/nvidia.nix ];
  boot.loader.systemd-boot.enable = true;
  boot.loader.efi.canTouchEfiVariables = true;
}
