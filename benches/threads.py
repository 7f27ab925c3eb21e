# Per-thread CPU of every `ringlog serve` process between t0 and t0 + window seconds
# from now (benches/issue16.sh): usage threads.py T0 WINDOW.
import os, sys, time, subprocess
t0, window = float(sys.argv[1]), float(sys.argv[2])
def pids():
    out = subprocess.run(['pgrep', '-f', 'ringlog serve'], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]
def snap():
    r = {}
    for pid in pids():
        try:
            for tid in os.listdir(f'/proc/{pid}/task'):
                s = open(f'/proc/{pid}/task/{tid}/stat').read()
                name = s[s.index('(') + 1:s.rindex(')')]
                f = s[s.rindex(')') + 2:].split()
                r[(pid, tid, name)] = int(f[11]) + int(f[12])
        except FileNotFoundError:
            pass
    return r
time.sleep(t0); a = snap(); time.sleep(window); b = snap()
per = {}
for k, v in b.items():
    pid, _, name = k
    name = name if name.startswith('shard-') else 'other'
    per.setdefault(pid, {}).setdefault(name, 0)
    per[pid][name] += v - a.get(k, 0)
for pid in sorted(per):
    tot = sum(per[pid].values()) or 1
    print(f"pid {pid}: " + ', '.join(f"{n} {100 * t / tot:.0f}%" for n, t in sorted(per[pid].items())))
