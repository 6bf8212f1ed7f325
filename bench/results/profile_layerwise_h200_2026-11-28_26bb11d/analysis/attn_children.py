"""Children of vllm::unified_attention_with_output / unified_kv_cache_update (where vLLM calls the connector's
wait_for_layer_load / save_kv_layer) and their uncovered (Python) time, per runner."""
import json,gzip,sys,collections
import os
B = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + '/'
p=sys.argv[1]
for r in ('v1runner','v2runner'):
  ev=[e for e in json.load(gzip.open(B+r+'/%s_1.trace.json.gz'%p))['traceEvents'] if e.get('ph')=='X' and e.get('cat') in ('cpu_op','cuda_runtime','cuda_driver')]
  ev.sort(key=lambda e:(e['ts'],-e['dur']))
  T0=min(e['ts'] for e in ev)
  for parent in ('vllm::unified_kv_cache_update','vllm::unified_attention_with_output'):
    P=[e for e in ev if e['name']==parent]
    selfs=[];kids=collections.Counter()
    for i,a in enumerate(P):
      ch=[e for e in ev if e['ts']>=a['ts'] and e['ts']+e['dur']<=a['ts']+a['dur'] and e is not a]
      # direct children
      top=[];end=-1
      for e in ch:
        if e['ts']>=end: top.append(e); end=e['ts']+e['dur']
      selfs.append(a['dur']-sum(e['dur'] for e in top))
      for e in top: kids[e['name']]+=1
      if i==3: print(r,parent,'layer3 children:',[(e['name'],round((e['ts']-a['ts']),1),e['dur']) for e in top])
    s=sorted(selfs)
    print(r,parent,'n',len(P),'dur median %.1f us'%sorted(e['dur'] for e in P)[len(P)//2],'uncovered(python) median %.1f us, sum %.2f ms, L0 %.1f'%(s[len(s)//2],sum(s)/1e3,selfs[0]), dict(kids))
