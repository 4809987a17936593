# Intel Arc B580 (12 GB).
# Its hardware (disks, kernel modules) is hardware-configuration.nix beside this file, which
# lib/hosts.nix adds to the host.
{ ... }:
{
  imports = [ ../../profiles/intel-arc.nix ];
  boot.loader.systemd-boot.enable = true;
  boot.loader.efi.canTouchEfiVariables = true;
  # The example fleet's Prometheus (inventories/prod.py's network): the node exporter is open to it only.
  services.ipex-fleet.metrics.allowFrom = [ "10.40.9.10" ];
  services.ipex.deviceSelector = "level_zero:0";
}
