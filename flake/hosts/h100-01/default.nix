# NVIDIA H100 SXM.
{ ... }:
{
  imports = [ ../profiles/nvidia.nix ];
}
