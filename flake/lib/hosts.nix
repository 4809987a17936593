# The fleet's hosts: one folder per host under ../hosts/. A folder with a default.nix is a host
# (its name is the folder's); its hardware-configuration.nix (nixos-generate-config's output, which
# `ipex-fleet enroll` writes) is added beside it. Nothing else under hosts/ makes a host: a stray
# file, or a folder without default.nix, is ignored.
# Pure Nix with no nixpkgs, so the tests can evaluate it where nixpkgs cannot be fetched.
let
  dir = ../hosts;
  entries = builtins.readDir dir;
  isHost = name: entries.${name} == "directory" && builtins.pathExists (dir + "/${name}/default.nix");
  names = builtins.filter isHost (builtins.attrNames entries);
  hardware = name: dir + "/${name}/hardware-configuration.nix";
in
{
  inherit names;
  # Each host's modules. Without a hardware file, services.ipex-fleet's assertion names the file to write.
  modules = builtins.listToAttrs (map (name: {
    inherit name;
    value = [ (dir + "/${name}/default.nix") ]
      ++ (if builtins.pathExists (hardware name) then [ (hardware name) ] else [ ]);
  }) names);
}
