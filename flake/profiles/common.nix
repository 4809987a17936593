# What every fleet host shares. Each host also imports its hardware-configuration.nix.
{ lib, ... }:
{
  services.ipex-fleet.enable = true;
  services.openssh = {
    enable = true;
    settings.PasswordAuthentication = false;
    settings.PermitRootLogin = "prohibit-password";
  };
  # No placeholder root filesystem or boot loader: each host imports its own hardware
  # configuration (services.ipex-fleet asserts it), as a wrong guess would not boot.
  system.stateVersion = "25.11";
}
