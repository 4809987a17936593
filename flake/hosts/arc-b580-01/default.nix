# Intel Arc B580 (12 GB).
{ ... }:
{
  imports = [ ../profiles/intel-arc.nix ];
  services.ipex.deviceSelector = "level_zero:0";
}
