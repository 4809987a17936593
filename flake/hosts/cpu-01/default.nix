# A CPU-only host (Ollama and ComfyUI on the CPU).
{ ... }:
{
  imports = [ ../profiles/cpu.nix ];
}
