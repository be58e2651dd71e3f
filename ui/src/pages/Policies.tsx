// The policy editor (loaded on demand: CodeMirror is most of its weight): YAML with the
// API's validation errors marked inline at the line it names, templates from
// configs/policy_examples/ to start from or download, and saving as a stored policy.
import { useEffect, useRef, useState } from 'react';
import { Button, Group, NativeSelect, Stack, Text, TextInput, Title } from '@mantine/core';
import { EditorView, basicSetup } from 'codemirror';
import { yaml as yamlLang } from '@codemirror/lang-yaml';
import { linter, lintGutter, forceLinting, type Diagnostic } from '@codemirror/lint';
import { api, unwrap } from '../api/client';
import type { Template } from '../api/types';
import { ErrorNote } from '../components/bits';
import { useProjects } from './Models';

interface Validation {
  valid: boolean;
  errors: { line: number | null; message: string }[];
  policy?: { name: string; stages: string[]; targets: string[] };
}

export default function Policies() {
  const projects = useProjects();
  const host = useRef<HTMLDivElement>(null);
  const view = useRef<EditorView | null>(null);
  const [templates, setTemplates] = useState<Template[]>([]);
  const [template, setTemplate] = useState('ptq_8bit');
  const [result, setResult] = useState<Validation | null>(null);
  const [project, setProject] = useState('');
  const [name, setName] = useState('my-policy');
  const [saved, setSaved] = useState('');
  const [err, setErr] = useState('');

  useEffect(() => {
    unwrap<{ templates: Template[] }>(api.GET('/policy-templates')).then((r) => setTemplates(r.templates), (e: Error) => setErr(e.message));
  }, []);

  useEffect(() => {
    if (!host.current) return;
    // The linter asks the API: the same validation a stored policy or a job gets.
    const check = linter(
      async (v): Promise<Diagnostic[]> => {
        const text = v.state.doc.toString();
        const r = await unwrap<Validation>(api.POST('/policies/validate', { body: { yaml: text } })).catch((e: Error) => ({ valid: false, errors: [{ line: null, message: e.message }] }));
        setResult(r);
        return r.errors.map((e) => {
          const line = v.state.doc.line(Math.min(Math.max(e.line ?? 1, 1), v.state.doc.lines));
          return { from: line.from, to: Math.max(line.to, line.from), severity: 'error', message: e.message };
        });
      },
      { delay: 300 },
    );
    view.current = new EditorView({
      doc: '',
      extensions: [basicSetup, yamlLang(), lintGutter(), check, EditorView.contentAttributes.of({ 'aria-label': 'Policy YAML', 'aria-describedby': 'policy-status' })],
      parent: host.current,
    });
    return () => view.current?.destroy();
  }, []);

  useEffect(() => {
    const t = templates.find((x) => x.id === template);
    const v = view.current;
    if (!t || !v) return;
    v.dispatch({ changes: { from: 0, to: v.state.doc.length, insert: t.yaml } });
    forceLinting(v);
  }, [template, templates]);

  function download() {
    const t = templates.find((x) => x.id === template);
    const text = view.current?.state.doc.toString() ?? t?.yaml ?? '';
    const url = URL.createObjectURL(new Blob([text], { type: 'application/yaml' }));
    const a = document.createElement('a');
    a.href = url;
    a.download = `${template}.yaml`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }

  async function save() {
    setErr('');
    setSaved('');
    try {
      const p = project || projects[0] || '';
      const r = await unwrap<{ id: string }>(api.POST('/policies', { body: { project: p, name, yaml: view.current?.state.doc.toString() ?? '' } }));
      setSaved(`Saved as ${r.id}`);
    } catch (e) {
      setErr((e as Error).message);
    }
  }

  const first = result?.errors[0];
  return (
    <Stack>
      <Title order={2}>Policies</Title>
      <Group align="end">
        <NativeSelect label="Start from a template" data={templates.map((t) => ({ value: t.id, label: t.title }))} value={template} onChange={(e) => setTemplate(e.currentTarget.value)} />
        <Button variant="default" onClick={download}>Download as YAML</Button>
      </Group>
      <div ref={host} data-testid="policy-editor" />
      <Text id="policy-status" role="status" data-testid="policy-status" fw={result && !result.valid ? 700 : undefined}>
        {!result ? 'Checking…' : result.valid ? `Valid: ${result.policy?.name} (${result.policy?.stages.join(' → ')}), targets ${result.policy?.targets.join(', ')}` : `Line ${first?.line ?? '?'}: ${first?.message}`}
      </Text>
      <Group align="end">
        <NativeSelect label="Project" data={projects.length ? projects : ['(no projects yet)']} value={project || projects[0] || ''} onChange={(e) => setProject(e.currentTarget.value)} />
        <TextInput label="Policy name" value={name} onChange={(e) => setName(e.currentTarget.value)} />
        <Button onClick={() => void save()} disabled={!result?.valid}>Save policy</Button>
      </Group>
      <ErrorNote error={err} />
      {saved && <Text role="status">{saved}</Text>}
    </Stack>
  );
}
