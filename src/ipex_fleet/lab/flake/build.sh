# Builds one lab toplevel. Runs under Nix with sandbox = false, so /bin/sh and coreutils come from
# the machine, as NixOS's own stdenv would provide them.
set -eu
mkdir -p "$out/bin" "$out/etc/ipex-fleet" "$out/share"
printf '%s\n' "$settingsJson" > "$out/settings.json"
printf '%s\n' "$nixosVersion" > "$out/nixos-version"
printf '%s\n' "$fleetConfigJson" > "$out/etc/ipex-fleet/config.json"
printf '%b' "$environmentText" > "$out/etc/ipex-fleet/environment"
printf 'NAME=NixOS\nID=nixos\nVERSION_ID="%s"\nPRETTY_NAME="NixOS %s (ipex-fleet lab)"\n' \
  "$nixosVersion" "$nixosVersion" > "$out/etc/os-release"
cp "$activate" "$out/bin/switch-to-configuration"
chmod 0555 "$out/bin/switch-to-configuration"
cp -r "$services" "$out/share/services"
