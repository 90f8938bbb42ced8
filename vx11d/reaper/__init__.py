"""The reaper: finds zombies and leftover processes and cleans them up by policy, via pidfds."""
