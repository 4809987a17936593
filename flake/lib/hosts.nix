# The fleet's hosts: one file per host (or hardware profile) under ../hosts/.
# Pure Nix with no nixpkgs, so the tests can evaluate it where nixpkgs cannot be fetched.
let
  files = builtins.attrNames (builtins.readDir ../hosts);
  nixFiles = builtins.filter (f: builtins.match ".*\\.nix" f != null) files;
  nameOf = f: builtins.substring 0 (builtins.stringLength f - 4) f;
in
{
  names = map nameOf nixFiles;
  modules = builtins.listToAttrs (map (f: { name = nameOf f; value = ../hosts + "/${f}"; }) nixFiles);
}
