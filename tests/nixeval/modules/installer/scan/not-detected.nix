# nixos/modules/installer/scan/not-detected.nix, as nixpkgs has it: what nixos-generate-config
# imports for hardware it could not detect (firmware that may be needed).
{ lib, ... }:
{
  hardware.enableRedistributableFirmware = lib.mkDefault true;
}
