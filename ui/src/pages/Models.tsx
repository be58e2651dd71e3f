// Models: a project's models; a model's versions (with state from their newest job) and
// its recommended artifact per runtime.
import { useEffect, useState } from 'react';
import { Anchor, Group, NativeSelect, SimpleGrid, Stack, Table, Text, Title } from '@mantine/core';
import { useLocalStorage } from '@mantine/hooks';
import { Link, useParams } from 'react-router-dom';
import { api, unwrap } from '../api/client';
import { RUNTIMES, type Artifact, type Model, type Version } from '../api/types';
import { ErrorNote, StateBadge, fmtTime } from '../components/bits';
import { ArtifactCard } from '../components/ArtifactCard';

export function useProjects(): string[] {
  const [projects, setProjects] = useState<string[]>([]);
  useEffect(() => {
    unwrap<{ projects: { id: string }[] }>(api.GET('/projects')).then((r) => setProjects(r.projects.map((p) => p.id)), () => setProjects([]));
  }, []);
  return projects;
}

export function Models() {
  const projects = useProjects();
  const [project, setProject] = useLocalStorage({ key: 'tamp.filter.models-project', defaultValue: '' });
  const [models, setModels] = useState<Model[]>([]);
  const [err, setErr] = useState('');
  const current = project || projects[0] || '';
  useEffect(() => {
    if (!current) return;
    unwrap<{ models: Model[] }>(api.GET('/projects/{project}/models', { params: { path: { project: current } } })).then(
      (r) => { setModels(r.models); setErr(''); },
      (e: Error) => setErr(e.message),
    );
  }, [current]);
  return (
    <section aria-labelledby="models-title">
      <Title order={2} id="models-title" mb="sm">Models</Title>
      <NativeSelect label="Project" data={projects.length ? projects : ['(no projects yet)']} value={current} onChange={(e) => setProject(e.currentTarget.value)} mb="md" w={300} />
      <ErrorNote error={err} />
      {models.length === 0 ? (
        <Text>No models in this project yet. Start one from <Anchor component={Link} to="/new">New job</Anchor>.</Text>
      ) : (
        <Table aria-label="Models" striped>
          <Table.Thead><Table.Tr><Table.Th scope="col">Model</Table.Th><Table.Th scope="col">Task</Table.Th><Table.Th scope="col">Created</Table.Th></Table.Tr></Table.Thead>
          <Table.Tbody>
            {models.map((m) => (
              <Table.Tr key={m.id}>
                <Table.Td><Anchor component={Link} to={`/models/${m.id}`}>{m.id}</Anchor></Table.Td>
                <Table.Td>{m.task ?? '—'}</Table.Td>
                <Table.Td>{fmtTime(m.created_at)}</Table.Td>
              </Table.Tr>
            ))}
          </Table.Tbody>
        </Table>
      )}
    </section>
  );
}

export function ModelDetail() {
  const { id = '' } = useParams();
  const [versions, setVersions] = useState<Version[]>([]);
  const [best, setBest] = useState<Artifact[]>([]);
  const [err, setErr] = useState('');
  useEffect(() => {
    unwrap<{ versions: Version[] }>(api.GET('/models/{id}/versions', { params: { path: { id } } })).then((r) => setVersions(r.versions), (e: Error) => setErr(e.message));
    Promise.all(
      RUNTIMES.map((rt) => unwrap<Artifact>(api.GET('/models/{id}/best', { params: { path: { id }, query: { target_runtime: rt } } })).catch(() => null)),
    ).then((xs) => setBest(xs.filter((x): x is Artifact => x !== null)));
  }, [id]);
  return (
    <Stack>
      <Title order={2}>Model {id}</Title>
      <ErrorNote error={err} />
      <section aria-labelledby="versions-title">
        <Title order={3} id="versions-title" size="h4" mb="xs">Versions</Title>
        <Table aria-label="Versions" striped>
          <Table.Thead><Table.Tr><Table.Th scope="col">Version</Table.Th><Table.Th scope="col">State</Table.Th><Table.Th scope="col">Latest job</Table.Th><Table.Th scope="col">Created</Table.Th></Table.Tr></Table.Thead>
          <Table.Tbody>
            {versions.map((v) => (
              <Table.Tr key={v.id}>
                <Table.Td>{v.version}</Table.Td>
                <Table.Td><StateBadge state={v.state} /></Table.Td>
                <Table.Td>{v.latest_job ? <Anchor component={Link} to={`/jobs/${v.latest_job}`}>{v.latest_job}</Anchor> : '—'}</Table.Td>
                <Table.Td>{fmtTime(v.created_at)}</Table.Td>
              </Table.Tr>
            ))}
          </Table.Tbody>
        </Table>
      </section>
      <section aria-labelledby="best-title">
        <Group mb="xs"><Title order={3} id="best-title" size="h4">Recommended artifacts, with the original's baseline</Title></Group>
        {best.length === 0 ? <Text>No artifact yet: a job on one of the versions makes one.</Text> : (
          <SimpleGrid cols={{ base: 1, md: 2 }}>{best.map((a) => <ArtifactCard key={a.artifact_id} a={a} />)}</SimpleGrid>
        )}
      </section>
    </Stack>
  );
}
