//! Promise: the outline climbs the same ladder as a batch, over one answer: an invalid or cut-off
//! outline is asked again once with its problems, then the template's stands in; a provider that
//! gives up yields the template's at once, and one that refuses everything is an error.

use roadmap_worker::{
    domain::{Outline, Phase, WeekSource},
    pipeline::batch::ProviderFault,
};
use testkit::scripted::{ScriptedLlm, Step};

use crate::fixture::{caller, generator, profile};

async fn run(steps: Vec<Step>) -> (Result<(Vec<Phase>, Outline), ProviderFault>, ScriptedLlm) {
    let (generator, llm) = generator(steps);
    let result = generator.outline(&profile(), 12, &caller()).await;
    (result, llm)
}

fn reasks(llm: &ScriptedLlm) -> Vec<bool> {
    llm.calls().iter().map(|c| c.reask).collect()
}

#[tokio::test(start_paused = true)]
async fn a_good_outline_is_the_models() {
    let (result, llm) = run(vec![]).await;
    let (phases, outline) = result.expect("an outline");
    assert_eq!(outline.source, WeekSource::Llm);
    assert!(!phases.is_empty());
    assert_eq!(outline.weeks.len(), 12);
    assert!(llm.calls().iter().all(|c| c.outline));
    assert_eq!(reasks(&llm), [false]);
}

#[tokio::test(start_paused = true)]
async fn a_cut_off_outline_is_asked_again_not_split() {
    let (result, llm) = run(vec![Step::CutAfter { weeks: 0 }]).await;
    let (_, outline) = result.expect("an outline");
    assert_eq!(outline.source, WeekSource::Llm);
    assert_eq!(reasks(&llm), [false, true]);
}

#[tokio::test(start_paused = true)]
async fn an_outline_invalid_twice_is_the_templates() {
    let (result, llm) = run(vec![Step::InvalidJson, Step::WrongWeeks]).await;
    let (_, outline) = result.expect("an outline");
    assert_eq!(outline.source, WeekSource::Fallback);
    assert_eq!(reasks(&llm), [false, true]);
    assert_eq!(outline.usage.llm_calls, 2, "the calls made are still counted");
}

#[tokio::test(start_paused = true)]
async fn a_provider_that_gives_up_yields_the_template_outline() {
    let (result, llm) = run(vec![Step::unavailable(None); 3]).await;
    let (_, outline) = result.expect("an outline");
    assert_eq!(outline.source, WeekSource::Fallback);
    assert_eq!(llm.calls().len(), 3, "one try and two retries, no re-ask");
}

#[tokio::test(start_paused = true)]
async fn a_configuration_fault_is_an_error() {
    let (result, _) = run(vec![Step::unauthorized()]).await;
    assert!(matches!(result, Err(ProviderFault(_))), "{result:?}");
}
