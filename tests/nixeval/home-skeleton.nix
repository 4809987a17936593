# A skeleton of the home-manager options the fleet's home modules touch, for evaluating them
# through `lib.evalModules` (home-manager cannot be fetched here). It follows home-manager's
# modules/home-environment.nix, modules/files.nix, modules/misc/assertions and
# modules/programs/vscode.nix (profiles.<name>.userSettings) in their types; an option that
# home-manager lacks fails here as there.
{ lib, pkgs }:
let
  inherit (lib) mkOption mkEnableOption types;
  jsonValue = types.oneOf [ types.bool types.int types.float types.str types.path (types.attrsOf jsonValue) (types.listOf jsonValue) ];
  fileType = types.submodule ({ name, config, ... }: {
    options = {
      target = mkOption { type = types.str; default = name; };
      text = mkOption { type = types.nullOr types.lines; default = null; };
      source = mkOption { type = types.nullOr (types.either types.path types.package); default = null; };
      executable = mkOption { type = types.nullOr types.bool; default = null; };
      recursive = mkOption { type = types.bool; default = false; };
    };
  });
in
[
  {
    options.assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
    options.warnings = mkOption { type = types.listOf types.str; default = [ ]; };
  }
  ({ config, ... }: {
    options.home = {
      username = mkOption { type = types.str; };
      homeDirectory = mkOption { type = types.path; };
      stateVersion = mkOption { type = types.str; };
      packages = mkOption { type = types.listOf types.package; default = [ ]; };
      sessionVariables = mkOption { type = types.lazyAttrsOf (types.either types.str (types.either types.int types.path)); default = { }; };
      file = mkOption { type = types.attrsOf fileType; default = { }; };
    };
    options.lib = mkOption { type = types.attrsOf types.attrs; default = { }; };
    # modules/files.nix: a link to a path outside the store, made at activation.
    config.lib.file.mkOutOfStoreSymlink = path:
      pkgs.stubDerivation "hm-outofstore-${baseNameOf (toString path)}" { outOfStoreTarget = toString path; };
    config.assertions = lib.mapAttrsToList (name: f: {
      assertion = (f.text != null) != (f.source != null);
      message = "home.file.\"${name}\": exactly one of text and source must be set";
    }) config.home.file;
  })
  {
    options.programs.vscode = {
      enable = mkEnableOption "Visual Studio Code";
      profiles = mkOption {
        type = types.attrsOf (types.submodule {
          options.userSettings = mkOption { type = types.attrsOf jsonValue; default = { }; };
        });
        default = { };
      };
    };
  }
  { config._module.args.pkgs = pkgs; }
]
