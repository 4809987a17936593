# Intel Data Center GPU Max 1550: two stacks, both used; bf16 on the matrix engines.
{ ... }:
{
  imports = [ ../profiles/intel-arc.nix ];
  services.ipex-fleet.minDevices = 2;
  services.ipex-comfyui.optimisation = { level = "O2"; precision = "bf16"; };
}
