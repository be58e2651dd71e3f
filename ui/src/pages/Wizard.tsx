// The job wizard: model version (upload one, or pick an uploaded one), policy (a template or
// a stored policy), constraints and runtimes, review, submit. Every step is plain form
// controls, so the whole wizard works from the keyboard alone.
import { useEffect, useMemo, useState } from 'react';
import { Button, Checkbox, FileInput, Group, NativeSelect, NumberInput, Radio, SimpleGrid, Stack, Stepper, Table, Text, TextInput, Title } from '@mantine/core';
import { useNavigate } from 'react-router-dom';
import { api, apiUrl, unwrap } from '../api/client';
import { RUNTIMES, type Model, type Policy, type Template, type Version } from '../api/types';
import { ErrorNote, InfoTip } from '../components/bits';
import { useProjects } from './Models';

const NEW = '＋ new…';
const NAME = /^[a-z0-9_][a-z0-9_-]{0,63}$/;
const DATA_FILES = [
  ['calib.npz', 'Calibration rows (calib.npz)'],
  ['eval.npz', 'Evaluation rows with labels (eval.npz)'],
  ['train.npz', 'Training rows, for fine-tuning and distillation (train.npz)'],
] as const;

function useList<T>(load: () => Promise<T[]>, deps: unknown[]): T[] {
  const [xs, setXs] = useState<T[]>([]);
  useEffect(() => {
    load().then(setXs, () => setXs([]));
  }, deps);
  return xs;
}

export function Wizard() {
  const navigate = useNavigate();
  const projects = useProjects();
  const [step, setStep] = useState(0);
  const [err, setErr] = useState('');
  const [busy, setBusy] = useState(false);
  const [mode, setMode] = useState<'upload' | 'existing'>('upload');
  const [projectSel, setProjectSel] = useState('');
  const [newProject, setNewProject] = useState('');
  const [modelSel, setModelSel] = useState('');
  const [newModel, setNewModel] = useState('');
  const [version, setVersion] = useState('v1');
  const [files, setFiles] = useState<Record<string, File | null>>({});
  const [policy, setPolicy] = useState('template:ptq_8bit');
  const [runtimes, setRuntimes] = useState<string[]>(['onnxruntime']);
  const [maxDrop, setMaxDrop] = useState<number | string>(1);
  const [maxLatency, setMaxLatency] = useState<number | string>('');
  const [minRatio, setMinRatio] = useState<number | string>('');
  const [idempotencyKey] = useState(() => crypto.randomUUID());

  const project = projectSel === NEW || (!projectSel && projects.length === 0) ? newProject : projectSel || projects[0] || '';
  const models = useList<Model>(() => (project && NAME.test(project) ? unwrap<{ models: Model[] }>(api.GET('/projects/{project}/models', { params: { path: { project } } })).then((r) => r.models) : Promise.resolve([])), [project]);
  const model = modelSel === NEW || (!modelSel && models.length === 0) ? newModel : modelSel || models[0]?.name || '';
  const modelId = `${project}.${model}`;
  const versions = useList<Version>(() => (mode === 'existing' && project && model ? unwrap<{ versions: Version[] }>(api.GET('/models/{id}/versions', { params: { path: { id: modelId } } })).then((r) => r.versions) : Promise.resolve([])), [mode, modelId]);
  const templates = useList<Template>(() => unwrap<{ templates: Template[] }>(api.GET('/policy-templates')).then((r) => r.templates), []);
  const stored = useList<Policy>(() => (project && NAME.test(project) ? unwrap<{ policies: Policy[] }>(api.GET('/policies', { params: { query: { project } } })).then((r) => r.policies) : Promise.resolve([])), [project]);
  const chosenVersion = mode === 'existing' ? version || versions[0]?.version || '' : version;
  const policyLabel = useMemo(() => {
    const [kind, id] = policy.split(':');
    return kind === 'template' ? templates.find((t) => t.id === id)?.title ?? id : id;
  }, [policy, templates]);

  function check(s: number): string {
    if (s === 0) {
      if (!NAME.test(project)) return 'Project: use lowercase letters, digits, - and _ (at most 64).';
      if (!NAME.test(model)) return 'Model: use lowercase letters, digits, - and _ (at most 64).';
      if (!NAME.test(chosenVersion)) return 'Version: use lowercase letters, digits, - and _ (at most 64).';
      if (mode === 'upload' && !files['model.onnx']) return 'Choose the model file (.onnx) to upload.';
      if (mode === 'upload' && !files['calib.npz'] && !files['eval.npz']) return 'Choose calibration or evaluation rows (.npz): PTQ calibrates on them and every job is measured on them.';
    }
    if (s === 2 && runtimes.length === 0) return 'Choose at least one target runtime.';
    return '';
  }

  function next() {
    const e = check(step);
    setErr(e);
    if (!e) setStep((s) => Math.min(3, s + 1));
  }

  async function submit() {
    setBusy(true);
    setErr('');
    try {
      if (!projects.includes(project)) await api.POST('/projects', { body: { name: project } });
      if (!models.some((m) => m.name === model)) {
        const r = await api.POST('/models', { body: { project_id: project, name: model, framework: 'onnx' } });
        if (!r.response.ok && r.response.status !== 409) await unwrap(Promise.resolve(r));
      }
      if (mode === 'upload') {
        const v = await unwrap<{ upload_urls: Record<string, string> }>(api.POST('/models/{id}/versions', { params: { path: { id: modelId } }, body: { version: chosenVersion, files: [] } }));
        for (const [name, file] of Object.entries(files)) {
          if (!file) continue;
          const r = await fetch(apiUrl(v.upload_urls[name]), { method: 'PUT', body: file });
          if (!r.ok) throw new Error(`uploading ${name} failed (${r.status})`);
        }
      }
      let policyId = policy.slice(policy.indexOf(':') + 1);
      if (policy.startsWith('template:')) {
        const t = templates.find((x) => x.id === policyId);
        if (!t) throw new Error('the chosen template is gone; pick another');
        await unwrap(api.POST('/policies', { body: { project, name: t.id.replace(/_/g, '-'), yaml: t.yaml } }));
        policyId = `${project}.${t.id.replace(/_/g, '-')}`;
      }
      const constraints: Record<string, number> = {};
      if (maxDrop !== '') constraints.max_metric_drop_pct = Number(maxDrop);
      if (maxLatency !== '') constraints.max_latency_ms_p50 = Number(maxLatency);
      if (minRatio !== '') constraints.min_compression_ratio = Number(minRatio);
      const job = await unwrap<{ job_id: string }>(
        api.POST('/jobs', {
          body: { model_version_id: `${modelId}/${chosenVersion}`, policy_id: policyId, target_runtimes: runtimes, constraints },
          params: { header: { 'Idempotency-Key': idempotencyKey } },
        }),
      );
      navigate(`/jobs/${job.job_id}`);
    } catch (e) {
      setErr((e as Error).message);
    } finally {
      setBusy(false);
    }
  }

  return (
    <section aria-labelledby="wizard-title">
      <Title order={2} id="wizard-title" mb="md">New compression job</Title>
      <Stepper active={step} onStepClick={(s) => s < step && setStep(s)} allowNextStepsSelect={false} mb="lg">
        <Stepper.Step label="Model" description="upload or pick a version">
          <Stack maw={640}>
            <Radio.Group label="Model version" value={mode} onChange={(v) => setMode(v as 'upload' | 'existing')}>
              <Group mt="xs">
                <Radio value="upload" label="Upload a new version" />
                <Radio value="existing" label="Use an uploaded version" />
              </Group>
            </Radio.Group>
            <NativeSelect label="Project" data={[...projects, NEW]} value={projectSel || (projects[0] ?? NEW)} onChange={(e) => setProjectSel(e.currentTarget.value)} />
            {(projectSel === NEW || projects.length === 0) && <TextInput label="New project name" value={newProject} onChange={(e) => setNewProject(e.currentTarget.value)} />}
            <NativeSelect label="Model" data={[...models.map((m) => m.name), NEW]} value={modelSel || (models[0]?.name ?? NEW)} onChange={(e) => setModelSel(e.currentTarget.value)} />
            {(modelSel === NEW || models.length === 0) && <TextInput label="New model name" value={newModel} onChange={(e) => setNewModel(e.currentTarget.value)} />}
            {mode === 'upload' ? (
              <>
                <TextInput label="Version" value={version} onChange={(e) => setVersion(e.currentTarget.value)} />
                <FileInput label="Model (.onnx)" placeholder="Choose the .onnx file" accept=".onnx" clearable value={files['model.onnx'] ?? null} onChange={(f) => setFiles((x) => ({ ...x, 'model.onnx': f }))} data-testid="file-model.onnx" />
                {DATA_FILES.map(([name, label]) => (
                  <FileInput key={name} label={label} placeholder="Choose an .npz file (optional)" accept=".npz" clearable value={files[name] ?? null} onChange={(f) => setFiles((x) => ({ ...x, [name]: f }))} data-testid={`file-${name}`} />
                ))}
              </>
            ) : (
              <NativeSelect label="Version" data={versions.length ? versions.map((v) => v.version) : ['(no uploaded versions)']} value={version && versions.some((v) => v.version === version) ? version : versions[0]?.version ?? ''} onChange={(e) => setVersion(e.currentTarget.value)} />
            )}
          </Stack>
        </Stepper.Step>
        <Stepper.Step label="Policy" description="what to do to it">
          <Radio.Group label="Policy" value={policy} onChange={setPolicy}>
            <SimpleGrid cols={{ base: 1, md: 2 }} mt="xs">
              {templates.map((t) => (
                <Radio key={t.id} value={`template:${t.id}`} label={<>{t.title} <InfoTip topic={t.technique} /></>} description={`${t.description ?? ''} · stages: ${(t.stages ?? []).join(' → ')}`} />
              ))}
              {stored.map((p) => <Radio key={p.id} value={`policy:${p.id}`} label={`Stored policy ${p.id}`} />)}
            </SimpleGrid>
          </Radio.Group>
        </Stepper.Step>
        <Stepper.Step label="Constraints" description="and runtimes">
          <Stack maw={480}>
            <NumberInput label={<>Max metric drop, % <InfoTip topic="max_metric_drop_pct" /></>} min={0} step={0.1} value={maxDrop} onChange={setMaxDrop} />
            <NumberInput label={<>Max P50 latency, ms (optional) <InfoTip topic="max_latency_ms_p50" /></>} min={0} step={0.1} value={maxLatency} onChange={setMaxLatency} />
            <NumberInput label={<>Min compression ratio (optional) <InfoTip topic="min_compression_ratio" /></>} min={1} step={0.5} value={minRatio} onChange={setMinRatio} />
            <Checkbox.Group label="Target runtimes" value={runtimes} onChange={setRuntimes}>
              <Group mt="xs">{RUNTIMES.map((r) => <Checkbox key={r} value={r} label={r} />)}</Group>
            </Checkbox.Group>
          </Stack>
        </Stepper.Step>
        <Stepper.Step label="Review" description="and submit">
          <Table aria-label="Review" maw={640} withTableBorder>
            <Table.Tbody>
              <Table.Tr><Table.Th scope="row">Model version</Table.Th><Table.Td>{modelId}/{chosenVersion} ({mode === 'upload' ? 'uploaded now' : 'already uploaded'})</Table.Td></Table.Tr>
              <Table.Tr><Table.Th scope="row">Files</Table.Th><Table.Td>{mode === 'upload' ? Object.entries(files).filter(([, f]) => f).map(([n, f]) => `${n} (${f!.name})`).join(', ') : '—'}</Table.Td></Table.Tr>
              <Table.Tr><Table.Th scope="row">Policy</Table.Th><Table.Td>{policyLabel}</Table.Td></Table.Tr>
              <Table.Tr><Table.Th scope="row">Constraints</Table.Th><Table.Td>max drop {maxDrop === '' ? '—' : `${maxDrop} %`}; max P50 {maxLatency === '' ? '—' : `${maxLatency} ms`}; min ratio {minRatio === '' ? '—' : `${minRatio}×`}</Table.Td></Table.Tr>
              <Table.Tr><Table.Th scope="row">Runtimes</Table.Th><Table.Td>{runtimes.join(', ')}</Table.Td></Table.Tr>
            </Table.Tbody>
          </Table>
        </Stepper.Step>
      </Stepper>
      <ErrorNote error={err} />
      <Group mt="md">
        <Button variant="default" onClick={() => setStep((s) => Math.max(0, s - 1))} disabled={step === 0}>Back</Button>
        {step < 3 ? <Button onClick={next}>Next</Button> : <Button onClick={() => void submit()} loading={busy}>Start job</Button>}
        <Text size="sm" aria-live="polite">Step {step + 1} of 4</Text>
      </Group>
    </section>
  );
}
