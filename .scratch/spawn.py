import time, sys
from vx11d import config, hijas
from vx11d.db import Database
cfg=config.load(); db=Database.from_config(cfg)
ids=[]
for tpl, ttl, args in [("sleeper",3,{}),("web",3,{}),("echo",5,{"code":2}),("echo",5,{})]:
    r=hijas.request_spawn(db,cfg,tpl,ttl,args,"test"); hijas.wake_madre(cfg.gateway.madre_wake_socket); ids.append(r["id"])
t0=time.time()
time.sleep(0.3)
for i in ids: r=hijas.get(db,i); print(r["id"],r["template"],r["status"],r["port"],r["main_pid"])
time.sleep(5)
for i in ids: r=hijas.get(db,i); print(r["id"],r["template"],r["status"],r["port"],r["result"],r["exit_status"],r["reason"], r["ended_at"] and round(r["ended_at"]-r["expires_at"],3))
for e in db.query("select event, subject from events where subject=?", (ids[0],)): print(tuple(e))
