# Builds one lab toplevel. Runs under Nix with sandbox = false, so /bin/sh and coreutils come from
# the machine, as NixOS's own stdenv would provide them.
set -eu
mkdir -p "$out/bin" "$out/etc/ipex-fleet" "$out/etc/systemd/system" "$out/share"
printf '%s\n' "$settingsJson" > "$out/settings.json"
printf '%s\n' "$nixosVersion" > "$out/nixos-version"
printf '%s\n' "$fleetConfigJson" > "$out/etc/ipex-fleet/config.json"
printf '%b' "$environmentText" > "$out/etc/ipex-fleet/environment"
printf 'NAME=NixOS\nID=nixos\nVERSION_ID="%s"\nPRETTY_NAME="NixOS %s (ipex-fleet lab)"\n' \
  "$nixosVersion" "$nixosVersion" > "$out/etc/os-release"
printf '%s' "$ollamaUnit" > "$out/etc/systemd/system/ollama.service"
printf '%s' "$comfyuiUnit" > "$out/etc/systemd/system/comfyui.service"
if [ -n "$nodeExporterUnit" ]; then printf '%s' "$nodeExporterUnit" > "$out/etc/systemd/system/prometheus-node-exporter.service"; fi
printf '%s' "$agentUnit" > "$out/etc/systemd/system/ipex-fleet-agent.service"
if [ -n "$cpuHogUnit" ]; then printf '%s' "$cpuHogUnit" > "$out/etc/systemd/system/cpu-hog.service"; fi
if [ -n "$sshLock" ]; then
  mkdir -p "$out/etc/ssh/sshd_config.d"
  printf '%b' "$sshLock" > "$out/etc/ssh/sshd_config.d/00-lab-lock.conf"
fi
{
  echo '#!/bin/sh'
  if [ -n "$failBoot" ]; then
    echo 'echo "boot check failed: this generation never completes its boot (lab fault fail_boot)" >&2'
    echo 'exit 1'
  else
    echo 'exit 0'
  fi
} > "$out/bin/boot-check"
chmod 0555 "$out/bin/boot-check"
cp "$activate" "$out/bin/switch-to-configuration"
cp "$activate" "$out/activate"
chmod 0555 "$out/bin/switch-to-configuration" "$out/activate"
cp -r "$services" "$out/share/services"
ln -s "$kernel/bzImage" "$out/kernel"
ln -s "$kernel/initrd" "$out/initrd"
ln -s "$kernel/lib/modules" "$out/kernel-modules"
# The system's packages, as NixOS links them: the ipex-fleet probe, bench and model installer.
mkdir -p "$out/sw"
ln -s "$ipexFleet/bin" "$out/sw/bin"
