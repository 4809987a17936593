# Intel Arc A770 (16 GB, no fp64).
{ ... }:
{
  imports = [ ../profiles/intel-arc.nix ];
  services.ipex.deviceSelector = "level_zero:0";
}
