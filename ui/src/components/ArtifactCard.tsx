// One recommended artifact: runtime badges, size and metrics beside the original's, and a
// download through its signed link that checks the file's sha256 in the browser.
import { useState } from 'react';
import { Badge, Button, Card, Group, Stack, Table, Text, Title } from '@mantine/core';
import { apiUrl } from '../api/client';
import type { Artifact } from '../api/types';
import { BADGE, InfoTip, fmtBytes, fmtNum } from './bits';

async function sha256Hex(buf: ArrayBuffer): Promise<string> {
  const d = await crypto.subtle.digest('SHA-256', buf);
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, '0')).join('');
}

export function ArtifactCard({ a }: { a: Artifact }) {
  const [check, setCheck] = useState('');
  const m = a.metrics ?? {};
  const task = m.task;
  // The runtime badges: ONNX Runtime's load check, and each pre-flight runtime check.
  const compat = (a.compatibility ?? {}) as Record<string, unknown>;
  const ort = compat.onnxruntime as { loads?: boolean } | undefined;
  const checks = (compat.runtimes as { runtime: string; compatible: boolean; problems?: unknown[] }[] | undefined) ?? [];
  const runtimes: [string, boolean][] = [
    ...(ort ? [['onnxruntime', ort.loads !== false] as [string, boolean]] : []),
    ...checks.filter((c) => c.runtime !== 'onnxruntime' || !ort).map((c) => [c.runtime, c.compatible] as [string, boolean]),
  ];
  async function download() {
    setCheck('Downloading…');
    try {
      const r = await fetch(apiUrl(a.uri));
      if (!r.ok) throw new Error(`the download link answered ${r.status}; reload the page for a new one`);
      const buf = await r.arrayBuffer();
      const sum = await sha256Hex(buf);
      if (sum !== a.sha256) throw new Error(`sha256 mismatch: got ${sum}, expected ${a.sha256}`);
      const url = URL.createObjectURL(new Blob([buf]));
      const link = document.createElement('a');
      link.href = url;
      link.download = `${a.model_id}-${a.runtime}.${a.format === 'tflite' ? 'tflite' : 'onnx'}`;
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
      setCheck(`sha256 verified: ${sum}`);
    } catch (e) {
      setCheck(`Download failed: ${(e as Error).message}`);
    }
  }
  return (
    <Card withBorder padding="md" data-testid={`artifact-${a.runtime}`}>
      <Stack gap="xs">
        <Group justify="space-between">
          <Title order={3} size="h4">{a.runtime} <InfoTip topic={a.runtime} /></Title>
          <Group gap={4}>
            <Badge color="#343a40" variant="filled">{a.format}{a.precision ? ` · ${a.precision}` : ''}</Badge>
            {runtimes.map(([rt, ok]) => (
              <Badge key={rt} color={ok ? BADGE.GREEN : BADGE.RED} variant="filled" aria-label={`${rt}: ${ok ? 'compatible' : 'not compatible'}`}>
                {rt} {ok ? '✓' : '✗'}
              </Badge>
            ))}
          </Group>
        </Group>
        <Table aria-label={`${a.runtime} artifact metrics`} withRowBorders={false}>
          <Table.Thead>
            <Table.Tr><Table.Th scope="col">Measure</Table.Th><Table.Th scope="col">Original</Table.Th><Table.Th scope="col">Compressed</Table.Th></Table.Tr>
          </Table.Thead>
          <Table.Tbody>
            {task && (
              <Table.Tr><Table.Th scope="row">{task.name} <InfoTip topic={task.name} /></Table.Th><Table.Td>{fmtNum(task.baseline, 4)}</Table.Td><Table.Td>{fmtNum(task.value, 4)} ({fmtNum(task.drop_pct)} % drop)</Table.Td></Table.Tr>
            )}
            <Table.Tr><Table.Th scope="row">P50 latency, ms <InfoTip topic="latency" /></Table.Th><Table.Td>{fmtNum(m.baseline_latency_ms_p50, 3)}</Table.Td><Table.Td>{fmtNum(m.latency_ms_p50, 3)}</Table.Td></Table.Tr>
            <Table.Tr><Table.Th scope="row">Size <InfoTip topic="ratio" /></Table.Th><Table.Td>—</Table.Td><Table.Td>{fmtBytes(a.size_bytes)} ({fmtNum(a.compression?.ratio)}× smaller)</Table.Td></Table.Tr>
          </Table.Tbody>
        </Table>
        {a.not_evaluated && <Text size="sm">Not measured on this runtime: {a.not_evaluated}</Text>}
        {(a.missed_constraints ?? []).length > 0 && <Text size="sm" c={BADGE.RED}>Misses: {(a.missed_constraints ?? []).join('; ')}</Text>}
        <Text size="xs" ff="monospace" style={{ wordBreak: 'break-all' }}>sha256 {a.sha256}</Text>
        <Group>
          <Button onClick={() => void download()} data-testid={`download-${a.runtime}`}>Download {a.format}</Button>
          <Text size="sm" role="status" data-testid={`download-status-${a.runtime}`}>{check}</Text>
        </Group>
      </Stack>
    </Card>
  );
}
