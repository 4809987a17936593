# What every fleet host shares. Real hosts also import their hardware-configuration.nix.
{ lib, ... }:
{
  services.ipex-fleet.enable = true;
  services.openssh = {
    enable = true;
    settings.PasswordAuthentication = false;
    settings.PermitRootLogin = "prohibit-password";
  };
  boot.loader.systemd-boot.enable = lib.mkDefault true;
  fileSystems."/" = lib.mkDefault { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
  system.stateVersion = "25.11";
}
