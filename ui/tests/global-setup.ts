// Before the browser tests: a project with the reference CNN uploaded and one PTQ job run
// to the end through the API, so every page has something real to show.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CNN, URL, apiCall } from './helpers';

export default async function setup() {
  if (!URL || !CNN) throw new Error('run the browser tests through `cargo test -p tamp-e2e --test ui` (it starts tamp serve and sets TAMP_URL, TAMP_TOKEN, TAMP_CNN)');
  await apiCall('POST', '/projects', { name: 'demo' });
  await apiCall('POST', '/models', { project_id: 'demo', name: 'cnn', task: 'image-classification', framework: 'onnx' });
  const v = await apiCall<{ upload_urls: Record<string, string> }>('POST', '/models/demo.cnn/versions', { version: 'v1' });
  if (v.status !== 201) throw new Error(`version: ${v.status} ${JSON.stringify(v.json)}`);
  for (const f of ['model.onnx', 'calib.npz', 'eval.npz']) {
    const u = v.json.upload_urls[f];
    const r = await fetch(u.startsWith('http') ? u : `${URL}${u}`, { method: 'PUT', body: readFileSync(join(CNN, f)) });
    if (!r.ok) throw new Error(`upload ${f}: ${r.status}`);
  }
  const yaml = readFileSync(join(process.cwd(), '../configs/policy_examples/ptq_8bit.yaml'), 'utf8');
  await apiCall('POST', '/policies', { project: 'demo', name: 'ptq-8bit', yaml });
  const j = await apiCall<{ job_id: string }>('POST', '/jobs', { model_version_id: 'demo.cnn/v1', policy_id: 'demo.ptq-8bit', target_runtimes: ['onnxruntime'], constraints: { max_metric_drop_pct: 1.0 } });
  if (j.status !== 201) throw new Error(`job: ${j.status} ${JSON.stringify(j.json)}`);
  const deadline = Date.now() + 300_000;
  for (;;) {
    const s = await apiCall<{ state: string; reason?: string }>('GET', `/jobs/${j.json.job_id}`);
    if (s.json.state === 'succeeded') break;
    if (['failed', 'cancelled'].includes(s.json.state) || Date.now() > deadline) throw new Error(`seed job ${j.json.job_id}: ${s.json.state} ${s.json.reason ?? ''}`);
    await new Promise((r) => setTimeout(r, 500));
  }
  process.env.TAMP_SEED_JOB = j.json.job_id;
}
