# A runnable two-path closure built from the host's C toolchain with `builtins` only
# (no nixpkgs needed): a copy of glibc's loader and libc, and `hello` linked against it.
# Nix finds the reference from hello to glibc by scanning, so `nix-store -qR` lists both.
{ system ? builtins.currentSystem, greeting ? "Hello, world!" }:
let
  mk = name: script: derivation {
    inherit name system;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  };
  glibc = mk "glibc-2.36" ''
    mkdir -p $out/lib
    cp -L /lib/x86_64-linux-gnu/libc.so.6 /lib64/ld-linux-x86-64.so.2 $out/lib/
  '';
  hello = mk "hello-2.12" ''
    mkdir -p $out/bin
    printf '#include <stdio.h>\nint main(int argc, char **argv){puts("${greeting}");for(int i=1;i<argc;i++)puts(argv[i]);return 0;}\n' > h.c
    gcc -O2 -o $out/bin/hello h.c \
      -Wl,--dynamic-linker=${glibc}/lib/ld-linux-x86-64.so.2 -Wl,-rpath,${glibc}/lib
  '';
in hello // { inherit glibc; }
