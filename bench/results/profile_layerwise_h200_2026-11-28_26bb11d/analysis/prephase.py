"""Top-level main-thread ops from trace start to the first qkv GEMM and from the last attention to the end,
compressed: runs of same-named ops merged. usage: prephase.py runner pass"""
import json,gzip,sys
import os
B = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + '/'
r,p=sys.argv[1],sys.argv[2]
ev=[e for e in json.load(gzip.open(B+r+'/%s_1.trace.json.gz'%p))['traceEvents'] if e.get('ph')=='X' and e.get('cat') in ('cpu_op','cuda_runtime','cuda_driver')]
ev.sort(key=lambda e:(e['ts'],-e['dur'])); T0=min(e['ts'] for e in ev); t=lambda x:(x-T0)/1e3
q=[e for e in ev if e['name']=='aten::addmm'][0]['ts']; a=[e for e in ev if e['name']=='vllm::unified_attention_with_output'][-1]
top=[];end=-1
for e in ev:
  if e['ts']>=end: top.append(e); end=e['ts']+e['dur']
def show(sel):
  runs=[]
  for e in sel:
    if runs and runs[-1][0]==e['name'] and e['ts']-runs[-1][2]<100: runs[-1][2]=e['ts']+e['dur']; runs[-1][3]+=1; runs[-1][4]+=e['dur']
    else: runs.append([e['name'],e['ts'],e['ts']+e['dur'],1,e['dur']])
  prev=None
  for n,s,f,c,b in runs:
    g=(s-prev)/1e3 if prev else 0
    print('  %8.3f %8.3f  gap%6.3f  %-40s x%-3d busy %.3f'%(t(s),t(f),g,n[:40],c,b/1e3)); prev=f
print('--',r,p,'pre-forward (until first qkv at %.3f)'%t(q)); show([e for e in top if e['ts']<q])
print('--',r,p,'post-forward (after last attention end %.3f)'%t(a['ts']+a['dur'])); show([e for e in top if e['ts']>a['ts']+a['dur']])
