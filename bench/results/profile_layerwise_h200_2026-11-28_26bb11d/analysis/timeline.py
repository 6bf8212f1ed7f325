"""Main-thread CPU timeline vs GPU streams for one trace.
usage: timeline.py <runner> <pass_L>   e.g. v1runner hit100_4000
Prints: top-level CPU op clusters (gap>GAP us splits), GPU main-stream idle gaps (>IDLE us) with the CPU
activity inside them, and per-layer timing (qkv linear start)."""
import json,gzip,collections,sys
import os
B = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + '/'
r,p=sys.argv[1],sys.argv[2]
GAP=float(sys.argv[3]) if len(sys.argv)>3 else 150
d=json.load(gzip.open(B+r+'/%s_1.trace.json.gz'%p))
ev=[e for e in d['traceEvents'] if e.get('ph')=='X' and 'ts' in e and e.get('cat')!='Trace']
gpu=[e for e in ev if e['cat'] in ('kernel','gpu_memcpy','gpu_memset')]
cpu=[e for e in ev if e['cat'] in ('cpu_op','cuda_runtime','cuda_driver','user_annotation','python_function')]
T0=min(e['ts'] for e in ev)
def t(x): return (x-T0)/1e3
tids=collections.Counter((e['cat'],e['tid']) for e in cpu); print('cpu tids',dict(tids))
print('trace span ms %.3f .. %.3f'%(0,t(max(e['ts']+e['dur'] for e in ev))))
g0=min(e['ts'] for e in gpu); print('first GPU event at %.3f ms'%t(g0))
# top-level cpu ops (not nested in another cpu_op)
cpu.sort(key=lambda e:(e['ts'],-e['dur']))
top=[];end=-1
for e in cpu:
    if e['ts']>=end: top.append(e); end=e['ts']+e['dur']
    else: end=max(end,e['ts']+e['dur']) if False else end
print('\n== main-thread top-level clusters (split at idle gaps > %d us) =='%GAP)
cl=[]
for e in top:
    if cl and e['ts']-cl[-1]['end']<GAP: cl[-1]['ev'].append(e); cl[-1]['end']=max(cl[-1]['end'],e['ts']+e['dur'])
    else: cl.append(dict(start=e['ts'],end=e['ts']+e['dur'],ev=[e]))
prev=None
for c in cl:
    busy=sum(e['dur'] for e in c['ev'])
    names=collections.Counter(e['name'] for e in c['ev'])
    gap=(c['start']-prev)/1e3 if prev else 0
    print('%8.3f-%8.3f (gap before %6.3f) n=%4d busy %.3f ms: %s'%(t(c['start']),t(c['end']),gap,len(c['ev']),busy/1e3,', '.join('%s x%d'%(k,v) for k,v in names.most_common(6))))
    prev=c['end']
# main-stream gaps
st=collections.Counter(e['args'].get('stream') for e in gpu)
main=max(st,key=lambda s:sum(e['dur'] for e in gpu if e['args'].get('stream')==s))
ms=sorted([e for e in gpu if e['args'].get('stream')==main],key=lambda e:e['ts'])
print('\n== GPU streams ==')
for s in st:
    es=sorted([e for e in gpu if e['args'].get('stream')==s],key=lambda e:e['ts'])
    print(' stream',s,'n',len(es),'first %.3f last %.3f'%(t(es[0]['ts']),t(es[-1]['ts']+es[-1]['dur'])), 'busy %.3f'%(sum(e['dur'] for e in es)/1e3))
print('\n== main stream %s idle gaps > 0.2 ms, with CPU top-level ops inside =='%main)
cur=ms[0]['ts']+ms[0]['dur']; idle_tot=0
for e in ms[1:]:
    if e['ts']-cur>200:
        a,b=cur,e['ts']; idle_tot+=b-a
        inside=[x for x in top if x['ts']<b and x['ts']+x['dur']>a]
        cpub=sum(min(b,x['ts']+x['dur'])-max(a,x['ts']) for x in inside)
        names=collections.Counter(x['name'] for x in inside)
        print(' idle %8.3f-%8.3f (%6.3f ms) -> next %s; CPU top-level busy inside %.3f ms: %s'%(t(a),t(b),(b-a)/1e3,e['name'][:40],cpub/1e3,', '.join('%s x%d'%(k,v) for k,v in names.most_common(5))))
    cur=max(cur,e['ts']+e['dur'])
print(' total idle %.3f ms; last main-stream end %.3f'%(idle_tot/1e3,t(cur)))
# per-layer: qkv linear = addmm (bias) top-level? use aten::addmm
lay=sorted([e for e in cpu if e['name']=='aten::addmm'],key=lambda e:e['ts'])
fa=sorted([e for e in cpu if e['name']=='vllm::unified_attention_with_output'],key=lambda e:e['ts'])
print('\n== per layer: CPU addmm(qkv) start ms, attention op start/dur, layer CPU period ==')
for i,e in enumerate(lay):
    nxt=lay[i+1]['ts'] if i+1<len(lay) else None
    a=fa[i] if i<len(fa) else None
    print(' L%02d qkv %.3f  attn %.3f dur %.3f  period %s'%(i,t(e['ts']),t(a['ts']) if a else -1,a['dur']/1e3 if a else -1,'%.3f'%((nxt-e['ts'])/1e3) if nxt else '-'))
