// The dashboard: jobs with their stage, health and ETA, filtered by state and project
// (filters persist in localStorage), refreshed every 3 s. Only the rows on screen are in the
// DOM (a window virtualizer), so 1,000 jobs render and scroll like 20; aria-rowcount and
// aria-rowindex tell screen readers where they are in the whole table.
import { memo, useEffect, useMemo, useRef, useState } from 'react';
import { useWindowVirtualizer } from '@tanstack/react-virtual';
import { Anchor, Group, NativeSelect, Progress, Table, Text, TextInput, Title } from '@mantine/core';
import { useLocalStorage } from '@mantine/hooks';
import { Link } from 'react-router-dom';
import { api, unwrap } from '../api/client';
import { ACTIVE, type Job } from '../api/types';
import { ErrorNote, InfoTip, StateBadge, fmtEta, fmtTime } from '../components/bits';

const ROW_H = 45;
const FILTERS = ['active', 'all', 'queued', 'running', 'succeeded', 'failed', 'cancelled'];

/// One row; memoised, so scrolling renders only the rows coming into view.
const JobRow = memo(function JobRow({ j, index }: { j: Job; index: number }) {
  return (
    <Table.Tr aria-rowindex={index + 2} style={{ height: ROW_H }}>
      <Table.Td><Anchor component={Link} to={`/jobs/${j.id}`}>{j.id}</Anchor></Table.Td>
      <Table.Td>{j.project}.{j.model}/{j.version}</Table.Td>
      <Table.Td>{j.policy || '—'}</Table.Td>
      <Table.Td><StateBadge state={j.state} /></Table.Td>
      <Table.Td>{j.current_stage ? `${j.current_stage.index + 1}. ${j.current_stage.kind} (${j.current_stage.state})` : '—'}</Table.Td>
      <Table.Td>
        <Progress value={j.progress.total ? (100 * j.progress.done) / j.progress.total : 0} aria-label={`${j.progress.done} of ${j.progress.total} stages done`} w={80} />
      </Table.Td>
      <Table.Td><StateBadge state={j.health} label="health" /></Table.Td>
      <Table.Td>{fmtEta(j.eta?.estimated_completion_minutes)}</Table.Td>
      <Table.Td>{fmtTime(j.created_at)}</Table.Td>
    </Table.Tr>
  );
});

export function Dashboard() {
  const [jobs, setJobs] = useState<Job[] | null>(null);
  const [err, setErr] = useState('');
  const [status, setStatus] = useLocalStorage({ key: 'tamp.filter.status', defaultValue: 'all' });
  const [project, setProject] = useLocalStorage({ key: 'tamp.filter.project', defaultValue: '' });

  useEffect(() => {
    let live = true;
    const load = async () => {
      try {
        const r = await unwrap<{ jobs: Job[] }>(api.GET('/jobs', { params: { query: { limit: 1000 } } }));
        if (live) {
          setJobs(r.jobs);
          setErr('');
        }
      } catch (e) {
        if (live) setErr((e as Error).message);
      }
    };
    void load();
    const t = setInterval(load, 3000);
    return () => {
      live = false;
      clearInterval(t);
    };
  }, []);

  const shown = useMemo(
    () =>
      (jobs ?? []).filter(
        (j) =>
          (status === 'all' || (status === 'active' ? ACTIVE.includes(j.state) : j.state === status)) &&
          (!project || j.project.includes(project) || j.model.includes(project)),
      ),
    [jobs, status, project],
  );

  useEffect(() => {
    if (jobs) performance.mark('tamp:dashboard-rendered');
  }, [jobs]);

  const body = useRef<HTMLTableSectionElement>(null);
  const rows = useWindowVirtualizer({ count: shown.length, estimateSize: () => ROW_H, overscan: 10, scrollMargin: body.current?.offsetTop ?? 0 });
  const items = rows.getVirtualItems();
  const padTop = items.length ? items[0].start - rows.options.scrollMargin : 0;
  const padBottom = items.length ? rows.getTotalSize() - (items[items.length - 1].end - rows.options.scrollMargin) : 0;

  return (
    <section aria-labelledby="dash-title">
      <Title order={2} id="dash-title" mb="sm">Jobs</Title>
      <Group mb="md" align="end">
        <NativeSelect label="State" data={FILTERS} value={status} onChange={(e) => setStatus(e.currentTarget.value)} />
        <TextInput label="Project or model" placeholder="filter" value={project} onChange={(e) => setProject(e.currentTarget.value)} />
        <Text size="sm" data-testid="job-count" aria-live="polite">
          {jobs ? `${shown.length} of ${jobs.length} jobs` : 'Loading jobs…'}
        </Text>
      </Group>
      <ErrorNote error={err} />
      <Table.ScrollContainer minWidth={900}>
        <Table striped highlightOnHover stickyHeader aria-label="Jobs" data-testid="jobs-table" aria-rowcount={shown.length + 1} data-rows={shown.length}>
          <Table.Thead>
            <Table.Tr aria-rowindex={1}>
              <Table.Th scope="col">Job</Table.Th>
              <Table.Th scope="col">Model</Table.Th>
              <Table.Th scope="col">Policy</Table.Th>
              <Table.Th scope="col">State</Table.Th>
              <Table.Th scope="col">Stage</Table.Th>
              <Table.Th scope="col">Progress</Table.Th>
              <Table.Th scope="col">Health <InfoTip topic="health" /></Table.Th>
              <Table.Th scope="col">ETA <InfoTip topic="eta" label="the ETA" /></Table.Th>
              <Table.Th scope="col">Created</Table.Th>
            </Table.Tr>
          </Table.Thead>
          <Table.Tbody ref={body}>
            {padTop > 0 && <tr aria-hidden="true" style={{ height: padTop }} />}
            {items.map((it) => <JobRow key={shown[it.index].id} j={shown[it.index]} index={it.index} />)}
            {padBottom > 0 && <tr aria-hidden="true" style={{ height: padBottom }} />}
          </Table.Tbody>
        </Table>
      </Table.ScrollContainer>
    </section>
  );
}
