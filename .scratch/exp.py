import time, selectors
from pystemd.dbuslib import DBus, apply_signature, path_decode, path_encode
from pystemd.systemd1.unit_signatures import signature_array
D=b"org.freedesktop.systemd1"; P=b"/org/freedesktop/systemd1"; M=b"org.freedesktop.systemd1.Manager"
ctl=DBus(); ctl.open(); mon=DBus(); mon.open()
events=[]
def cb(msg, error=None, userdata=None):
    msg.process_reply(True)
    events.append((time.time(), msg.headers.get(b"Path") if msg.headers else None, msg.headers.get(b"Member"), msg.body))
mon.match_signal(D, None, b"org.freedesktop.DBus.Properties", b"PropertiesChanged", cb)
mon.match_signal(D, P, M, None, cb)
mon.call_method(D,P,M,b"Subscribe",[])
name=b"vx11-hija-exp1.service"
props={b"Description":b"x", b"ExecStart":[(b"/usr/bin/sleep",[b"/usr/bin/sleep",b"infinity"],False)], b"RuntimeMaxUSec":2_000_000, b"CollectMode":b"inactive-or-failed", b"DynamicUser":True, b"Environment":[b"A=1"], b"CPUQuotaPerSecUSec": 500000, b"MemoryMax": 100*2**20, b"TasksMax": 10}
args=apply_signature(b"ss",[name,b"fail"])+signature_array(props)+[(ord(b"a"),b"(sa(sv))"),(-1,None)]
t0=time.time()
job=ctl.call_method(D,P,M,b"StartTransientUnit",args).body
print("job", job, time.time()-t0)
up=ctl.call_method(D,P,M,b"GetUnit",apply_signature(b"s",[name])).body
print("path", up, path_decode(up, b"/org/freedesktop/systemd1/unit"))
r=ctl.call_method(D,up,b"org.freedesktop.DBus.Properties",b"GetAll",apply_signature(b"s",[b"org.freedesktop.systemd1.Service"])).body
print({k:v for k,v in r.items() if k in (b"RuntimeMaxUSec",b"MainPID",b"CPUQuotaPerSecUSec",b"MemoryMax",b"TasksMax",b"DynamicUser",b"Environment",b"Result",b"ExecMainStatus")})
r=ctl.get_property(D,up,b"org.freedesktop.systemd1.Unit",b"ActiveState",b"s"); print("active",r)
lu=ctl.call_method(D,P,M,b"ListUnitsByPatterns",apply_signature(b"asas",[[],[b"vx11-hija-*"]])).body
print("list", lu)
sel=selectors.DefaultSelector(); sel.register(mon.get_fd(), selectors.EVENT_READ)
end=time.time()+4
while time.time()<end:
    sel.select(0.5)
    while True:
        m=mon.process()
        if m.is_empty(): break
for e in events:
    t,p,mem,b=e
    if mem==b"PropertiesChanged" and b"hija" in (p or b""):
        d=b[1]; print(round(t-t0,3), p, b[0], {k:v for k,v in d.items() if k in (b"ActiveState",b"SubState",b"Result",b"ExecMainStatus",b"ExecMainCode",b"MainPID",b"InactiveEnterTimestamp",b"ActiveEnterTimestamp")})
    elif mem!=b"PropertiesChanged": print(round(t-t0,3), mem, b)
try:
    ctl.call_method(D,P,M,b"GetUnit",apply_signature(b"s",[name]))
except Exception as e: print("gone:", type(e), e, getattr(e,'args',None))
