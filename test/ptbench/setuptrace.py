#!/usr/bin/env python3
"""Trace where a setup's time goes, packet by packet, with no change to any
program: run ptbench's setup phase (sequential, interleaved setups), record the
kernel's tcp:tcp_probe (every TCP segment a socket receives, with ports and
length) and sock:inet_sock_set_state (every connect) for the ports of the
chain's processes, cut the record into setups (one at a time), and print, per
topology, the median time of each message from the application's connect.

usage (as root, with perf; one chain at a time, since only the first group of
topologies is traced):

    test/ptbench/setuptrace.py /tmp/trace 8 -- bin/ptbench -bin bin -hops 1 -pts test \
        -size 0 -idle 0 -hold 0 -setups 5000 -ref loop [-ref-public]

SYSCALLS=cs,cc (roles: cs, cc, relay-client, relay-server) also records those
processes' system calls (raw_syscalls, into OUTDIR/sys.data, for perf script).
The tracing costs each traced segment a few microseconds; compare topologies
within one trace, not across traces. docs/performance.md, "Setup", has what
it found.
"""
import collections, os, re, signal, statistics, subprocess, sys, threading, time

out, secs = sys.argv[1], float(sys.argv[2])
args = sys.argv[sys.argv.index('--') + 1:]
os.makedirs(out, exist_ok=True)

bench = subprocess.Popen(args, stdout=open(f'{out}/ptbench.out', 'w'), stderr=subprocess.PIPE, text=True)
# Wait until the setups run (warm-up done).
for line in bench.stderr:
    if 'setups 101-' in line and 'raw TCP' not in line:
        break
else:
    sys.exit('ptbench ended before its setups')
# Keep draining its stderr.
threading.Thread(target=lambda: [None for _ in bench.stderr], daemon=True).start()

def proc(pid, what):
    try:
        return open(f'/proc/{pid}/{what}', 'rb').read()
    except OSError:
        return b''

def ppid(pid):
    s = proc(pid, 'stat').decode()
    return int(s[s.rindex(')') + 2:].split()[1]) if s else 0

def descendants(root):
    out = []
    kids = collections.defaultdict(list)
    for p in os.listdir('/proc'):
        if p.isdigit():
            kids[ppid(int(p))].append(int(p))
    todo = [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids[p]
    return out

ours = set(descendants(bench.pid))
# Listeners: port -> (pid, fd, comm)
listeners = {}
for line in subprocess.run(['ss', '-ltnpH'], capture_output=True, text=True).stdout.splitlines():
    m = re.search(r':(\d+)\s+\S+\s+users:\(\("([^"]+)",pid=(\d+),fd=(\d+)\)', line)
    if m and int(m.group(3)) in ours:
        listeners[int(m.group(1))] = (int(m.group(3)), int(m.group(4)), m.group(2))

def role_of_pid(pid):
    cmd = proc(pid, 'cmdline').split(b'\0')
    name = os.path.basename(cmd[0].decode())
    if name == 'ptbench':
        return cmd[1].decode() if len(cmd) > 1 and not cmd[1].startswith(b'-') else 'ptbench'
    if name == 'testpt':
        parent = os.path.basename(proc(ppid(pid), 'cmdline').split(b'\0')[0].decode())
        env = proc(pid, 'environ')
        side = 'client' if b'TOR_PT_CLIENT_TRANSPORTS' in env else 'server'
        owner = {'ptcombiner-client': 'cc', 'ptcombiner-server': 'cs'}.get(parent, 'ref')
        return f'pt-{side}[{owner}]'
    return {'ptcombiner-client': 'cc', 'ptcombiner-server': 'cs'}.get(name, name)

# Name each listener by its owner and, for owners with several, by the
# order they opened them (descriptor numbers).
byowner = collections.defaultdict(list)
for port, (pid, fd, comm) in listeners.items():
    byowner[pid].append((fd, port))
names = {}
for pid, lst in byowner.items():
    r = role_of_pid(pid)
    lst.sort()
    if r == 'sink':
        names[lst[0][1]], names[lst[1][1]] = 'sink-plain', 'sink-ext'
    elif r == 'cs':
        # launch opens the child's Extended ORPort, then its ORPort; Start
        # opens the public listener after.
        names[lst[0][1]], names[lst[1][1]], names[lst[-1][1]] = 'cs-ext', 'cs-or', 'cs-public'
    elif r.startswith('relay-server'):
        for i, (fd, port) in enumerate(lst):
            names[port] = f'rs-listen{i}'
    elif r.startswith('relay-client'):
        names[lst[0][1]] = 'rc-socks'
    elif r == 'cc':
        names[lst[0][1]] = 'cc-socks'
    else:
        for i, (fd, port) in enumerate(lst):
            names[port] = r + (f'#{i}' if len(lst) > 1 else '')
open(f'{out}/listeners.txt', 'w').write('\n'.join(f'{p} {n} {listeners[p]}' for p, n in sorted(names.items())))

ports = sorted(names)
flt = ' || '.join(f'sport == {p} || dport == {p}' for p in ports)
want = os.environ.get('SYSCALLS', '').split(',')  # roles: cs, cc, relay-client, ...
trpids = [pid for pid, lst in byowner.items() if role_of_pid(pid).split(' ')[0] in want]
sysperf = None
if trpids:
    open(f'{out}/syspids.txt', 'w').write('\n'.join(f'{p} {role_of_pid(p)}' for p in trpids))
    sysperf = subprocess.Popen(['perf', 'record', '-q', '-p', ','.join(map(str, trpids)), '-o', f'{out}/sys.data',
                                '-e', 'raw_syscalls:sys_enter', '-e', 'raw_syscalls:sys_exit'])
perf = subprocess.Popen(['perf', 'record', '-q', '-a', '-o', f'{out}/perf.data',
                         '-e', 'tcp:tcp_probe', '--filter', flt,
                         '-e', 'sock:inet_sock_set_state', '--filter', flt])
time.sleep(secs)
perf.send_signal(signal.SIGINT)
perf.wait()
if sysperf:
    sysperf.send_signal(signal.SIGINT)
    sysperf.wait()
bench.send_signal(signal.SIGINT)
bench.wait()

script = subprocess.run(['perf', 'script', '-i', f'{out}/perf.data', '-F', 'time,event,trace'],
                        capture_output=True, text=True).stdout
entry = {'cc-socks': '(a) combiners', 'rc-socks': '(c) relay', 'sink-plain': '(d) raw TCP'}
setups = []  # (topology, t0, events)
cur = None
conns = {}   # (client port, listener port) -> [name, count c->s, count s->c]
for line in script.splitlines():
    m = re.match(r'\s*([\d.]+):\s+(\S+):\s+(.*)', line)
    if not m:
        continue
    t, ev, rest = float(m.group(1)), m.group(2), m.group(3)
    if ev == 'sock:inet_sock_set_state':
        f = dict(kv.split('=', 1) for kv in rest.split() if '=' in kv)
        sport, dport = int(f['sport']), int(f['dport'])
        if dport not in names:
            continue
        n = names[dport]
        if f['newstate'] == 'TCP_SYN_SENT':
            # The source port is not chosen yet (tcp_v4_connect sets the
            # state first): the connection is recorded once established.
            if n in entry:
                cur = [entry[n], t, []]
                setups.append(cur)
            if cur:
                cur[2].append((t - cur[1], f'connect {n}', 0))
        elif f['newstate'] == 'TCP_ESTABLISHED' and f['oldstate'] == 'TCP_SYN_SENT':
            conns[(sport, dport)] = [n, 0, 0]
    elif ev == 'tcp:tcp_probe':
        f = dict(kv.split('=', 1) for kv in rest.split() if '=' in kv)
        if int(f['data_len']) == 0:
            continue
        src, dst = int(f['src'].rsplit(':', 1)[1]), int(f['dest'].rsplit(':', 1)[1])
        # src is the receiving socket's own port.
        if (dst, src) in conns:      # the listener side received: client -> server
            c, d = conns[(dst, src)], 1
        elif (src, dst) in conns:    # the client side received: server -> client
            c, d = conns[(src, dst)], 2
        else:
            continue
        c[d] += 1
        if cur:
            arrow = '->' if d == 1 else '<-'
            cur[2].append((t - cur[1], f'{c[0]} {arrow} #{c[d]}', int(f['data_len'])))

by = collections.defaultdict(list)
for topo, t0, evs in setups[1:-1]:  # the first and last may be cut
    by[topo].append(evs)
for topo, runs in sorted(by.items()):
    # The setup ends when the echoed byte is back at the application: the
    # entry connection's 4th message back (SOCKS: methods, auth, CONNECT,
    # then the byte), or the 1st for raw TCP.
    ends = []
    agg = collections.defaultdict(list)
    sizes = collections.defaultdict(collections.Counter)
    for evs in runs:
        end = None
        for dt, lab, size in evs:
            agg[lab].append(dt)
            sizes[lab][size] += 1
            if lab.split(' ')[0] in entry and ' <- #' in lab:
                k = int(lab.split('#')[1])
                if k == (1 if topo.startswith('(d)') else 4):
                    end = dt
        if end is not None:
            ends.append(end)
    ends.sort()
    print(f'\n{topo}: {len(runs)} setups, to the echoed byte: p50 {1e3*statistics.median(ends):.3f} ms, '
          f'p90 {1e3*ends[int(len(ends)*0.9)]:.3f} ms' if ends else f'\n{topo}: {len(runs)} setups')
    rows = [(statistics.median(v), lab, len(v)) for lab, v in agg.items() if len(v) >= len(runs) * 0.5]
    prev = 0
    for med, lab, n in sorted(rows):
        size = '' if lab.startswith('connect') else ' (' + '/'.join(f'{b} B' for b, _ in sizes[lab].most_common(2)) + ')'
        print(f'  {1e3*med:8.3f} ms  (+{1e3*(med-prev):6.3f})  {lab}{size}  [{n}]')
        prev = med
