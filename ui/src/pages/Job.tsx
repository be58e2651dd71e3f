// One job, live: state, health, ETA, its stages and its timeline, refreshed every second
// while it runs; once it succeeded, its report and the model's artifacts.
import { useEffect, useState } from 'react';
import { Anchor, Button, Group, Progress, SimpleGrid, Stack, Table, Text, Timeline, Title } from '@mantine/core';
import { Link, useParams } from 'react-router-dom';
import { api, unwrap } from '../api/client';
import { ACTIVE, RUNTIMES, type Artifact, type Job } from '../api/types';
import { ArtifactCard } from '../components/ArtifactCard';
import { ErrorNote, InfoTip, StateBadge, fmtEta, fmtTime } from '../components/bits';

export function JobPage() {
  const { id = '' } = useParams();
  const [job, setJob] = useState<Job | null>(null);
  const [err, setErr] = useState('');
  const [artifacts, setArtifacts] = useState<Artifact[]>([]);
  useEffect(() => {
    let live = true;
    let timer: ReturnType<typeof setTimeout>;
    const load = async () => {
      try {
        const j = await unwrap<Job>(api.GET('/jobs/{id}', { params: { path: { id } } }));
        if (!live) return;
        setJob(j);
        setErr('');
        if (ACTIVE.includes(j.state)) timer = setTimeout(load, 1000);
        else if (j.state === 'succeeded') {
          const modelId = `${j.project}.${j.model}`;
          const xs = await Promise.all(RUNTIMES.map((rt) => unwrap<Artifact>(api.GET('/models/{id}/best', { params: { path: { id: modelId }, query: { target_runtime: rt } } })).catch(() => null)));
          if (live) setArtifacts(xs.filter((x): x is Artifact => x !== null));
        }
      } catch (e) {
        if (live) setErr((e as Error).message);
      }
    };
    void load();
    return () => {
      live = false;
      clearTimeout(timer);
    };
  }, [id]);

  async function cancel() {
    try {
      await unwrap(api.POST('/jobs/{id}/cancel', { params: { path: { id } } }));
    } catch (e) {
      setErr((e as Error).message);
    }
  }

  if (!job) return <Stack><Title order={2}>Job {id}</Title><ErrorNote error={err} />{!err && <Text>Loading…</Text>}</Stack>;
  const active = ACTIVE.includes(job.state);
  return (
    <Stack>
      <Group justify="space-between">
        <Title order={2}>Job {job.id}</Title>
        <Group>
          {active && <Button variant="default" onClick={() => void cancel()}>Cancel job</Button>}
          {!active && <Button component={Link} to={`/jobs/${job.id}/report`}>Open report</Button>}
        </Group>
      </Group>
      <ErrorNote error={err} />
      <Group gap="lg" data-testid="job-summary">
        <Text>Model <Anchor component={Link} to={`/models/${job.project}.${job.model}`}>{job.project}.{job.model}</Anchor>/{job.version}</Text>
        <Text>Policy {job.policy || '—'}</Text>
        <StateBadge state={job.state} />
        <StateBadge state={job.health} label="health" />
        <Text>ETA {fmtEta(job.eta?.estimated_completion_minutes)} <InfoTip topic="eta" label="the ETA" /></Text>
      </Group>
      <Progress value={job.progress.total ? (100 * job.progress.done) / job.progress.total : 0} aria-label={`${job.progress.done} of ${job.progress.total} stages done`} />
      {job.reason && <Text fw={job.state === 'failed' ? 700 : undefined} role="status">Reason: {job.reason}</Text>}
      <SimpleGrid cols={{ base: 1, md: 2 }}>
        <section aria-labelledby="stages-title">
          <Title order={3} size="h4" id="stages-title" mb="xs">Stages</Title>
          <Table aria-label="Stages" striped>
            <Table.Thead><Table.Tr><Table.Th scope="col">#</Table.Th><Table.Th scope="col">Technique</Table.Th><Table.Th scope="col">State</Table.Th><Table.Th scope="col">Attempt</Table.Th></Table.Tr></Table.Thead>
            <Table.Tbody>
              {job.stages.map((s) => (
                <Table.Tr key={s.index}>
                  <Table.Td>{s.index + 1}</Table.Td>
                  <Table.Td>{s.kind} <InfoTip topic={s.kind} /></Table.Td>
                  <Table.Td><StateBadge state={s.state} /></Table.Td>
                  <Table.Td>{s.attempt} of {s.max_attempts}</Table.Td>
                </Table.Tr>
              ))}
            </Table.Tbody>
          </Table>
        </section>
        <section aria-labelledby="events-title">
          <Title order={3} size="h4" id="events-title" mb="xs">Events</Title>
          <Timeline bulletSize={14} lineWidth={2} data-testid="timeline">
            {(job.timeline ?? []).map((e, i) => (
              <Timeline.Item key={i} title={e.event}>
                <Text size="sm">{e.detail}</Text>
                <Text size="xs">{fmtTime(e.time)}</Text>
              </Timeline.Item>
            ))}
          </Timeline>
        </section>
      </SimpleGrid>
      {artifacts.length > 0 && (
        <section aria-labelledby="artifacts-title">
          <Title order={3} size="h4" id="artifacts-title" mb="xs">Artifacts</Title>
          {artifacts.some((a) => a.job !== job.id) && <Text size="sm" mb="xs">The model's best artifact for some runtimes comes from another job; each card says which.</Text>}
          <SimpleGrid cols={{ base: 1, md: 2 }}>{artifacts.map((a) => <ArtifactCard key={a.artifact_id} a={a} />)}</SimpleGrid>
        </section>
      )}
    </Stack>
  );
}
